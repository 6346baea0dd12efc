"""A deterministic corpus of malformed or hostile SIP messages and RTP datagrams.

None of the SIP messages may set up a call: each is broken, or asks for something the agent
must refuse. Seeded, so a failure names a reproducible corpus index.
"""

from __future__ import annotations

import random
import struct

SDP_OK = (
    "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 39000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP_NO_COMMON_CODEC = SDP_OK.replace("RTP/AVP 0", "RTP/AVP 9").replace("0 PCMU", "9 G722")


def _message(
    method: str = "INVITE",
    *,
    target: str = "sip:agent@127.0.0.1",
    start_line: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    drop: tuple[str, ...] = (),
    add: list[tuple[str, str]] | None = None,
    body: str = SDP_NO_COMMON_CODEC,
    content_length: str | None = None,
    index: int = 0,
) -> bytes:
    base = headers or [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bKhostile{index};rport"),
        ("From", f"<sip:attacker@127.0.0.1>;tag=h{index}"),
        ("To", "<sip:agent@127.0.0.1>"),
        ("Call-ID", f"hostile-{index}@127.0.0.1"),
        ("CSeq", f"1 {method}"),
        ("Contact", "<sip:attacker@127.0.0.1:39999>"),
        ("Max-Forwards", "70"),
        ("Content-Type", "application/sdp"),
    ]
    lines = [start_line if start_line is not None else f"{method} {target} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in base if name not in drop]
    lines += [f"{name}: {value}" for name, value in (add or [])]
    length = content_length if content_length is not None else str(len(body.encode()))
    if length != "omit":
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def hostile_sip_messages(seed: int = 2026) -> list[bytes]:
    rng = random.Random(seed)
    corpus: list[bytes] = []
    index = 0

    def add(data: bytes) -> None:
        nonlocal index
        corpus.append(data)
        index += 1

    bad_start_lines = [
        "", "INVITE", "INVITE sip:agent@127.0.0.1", "INVITE sip:agent@127.0.0.1 SIP/3.0",
        "INVITE sip:agent@127.0.0.1 HTTP/1.1", "GET / HTTP/1.1", "SIP/2.0", "SIP/2.0 abc OK",
        "SIP/2.0 99 Too Low", "SIP/2.0 700 Too High", "SIP/2.0 -200 Negative",
        "INVITE  sip:agent@127.0.0.1  SIP/2.0", "INVITE\tsip:agent@127.0.0.1\tSIP/2.0",
        "IN VITE sip:agent@127.0.0.1 SIP/2.0", "INVITE agent SIP/2.0", "INVITE  SIP/2.0",
        "INV\x00ITE sip:agent@127.0.0.1 SIP/2.0", "\u00e9\u00e9 sip:a@b SIP/2.0",
        "INVITE sip:agent@127.0.0.1 SIP/2.0 trailing", "SIP/2.0 200",
        "SIP/2.0 20000000000000000000 OK", "<?xml version='1.0'?>", "{\"json\": true}",
        "SIP/1.0 200 OK", "INVITE sip:agent@127.0.0.1 sip/2.0", " INVITE sip:a@b SIP/2.0",
        "INVITE sip:agent@[::1 SIP/2.0", "INVITE tel:+15551234567 SIP/2.0x",
        "ACK sip:agent@127.0.0.1 SIP/2.0 SIP/2.0", "REGISTER sip:127.0.0.1 SIP/2.",
    ]  # fmt: skip
    for line in bad_start_lines:
        add(_message(start_line=line, index=index))

    mandatory = ("Via", "From", "To", "Call-ID", "CSeq")
    for method in ("INVITE", "BYE", "OPTIONS", "CANCEL"):
        for name in mandatory:
            add(_message(method, drop=(name,), index=index))

    for method in ("INVITE", "BYE", "OPTIONS"):
        for name, value in (
            ("From", "<sip:other@127.0.0.1>;tag=x"), ("To", "<sip:other@127.0.0.1>"),
            ("Call-ID", "second-call-id"), ("CSeq", f"2 {method}"), ("Content-Length", "0"),
            ("Max-Forwards", "1"),
        ):  # fmt: skip
            add(_message(method, add=[(name, value)], index=index))

    for method in ("INVITE", "BYE", "OPTIONS", "INFO"):
        for length in (
            "1000000000",
            "-1",
            "abc",
            "99999999999999999999",
            "9999",
            "1e3",
            " ",
            "0x10",
        ):
            add(_message(method, content_length=length, index=index))

    for method in ("INVITE", "BYE", "OPTIONS"):
        for cseq in ("abc INVITE", "1", "-5 " + method, "4294967296 " + method, "1 FOO", "", "1  "):
            add(_message(method, add=[], index=index,
                         headers=[("Via", "SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bKc"),
                                  ("From", "<sip:a@b>;tag=1"), ("To", "<sip:c@d>"),
                                  ("Call-ID", f"cseq-{index}"), ("CSeq", cseq)]))  # fmt: skip

    for size in (1, 2, 3, 4, 7, 12, 20, 64, 100, 200, 500, 1000, 1400, 3000, 8000):
        for _ in range(3):
            add(bytes(rng.getrandbits(8) for _ in range(size)))
    for size in (17000, 30000, 65000):
        add(_message(add=[("X-Padding", "A" * size)], index=index))
        add(b"\x00" * size)

    broken_header_lines = [
        ("Via", ""), ("Via", "garbage"), ("Via", "SIP/2.0/UDP"), ("Via", "SIP/2.0/UDP :;;;"),
        ("From", "garbage-without-uri"), ("From", "<>"), ("To", ""), ("Contact", "<sip:"),
        ("Contact", "*"), ("Call-ID", ""), ("Via", "SIP/2.0/UDP 127.0.0.1:notaport;branch=x"),
        ("Via", "SIP/2.0/UDP 127.0.0.1:99999999;branch=z9hG4bKx;rport"),
    ]  # fmt: skip
    for name, value in broken_header_lines:
        base = [
            ("Via", "SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bKb"), ("From", "<sip:a@b>;tag=1"),
            ("To", "<sip:agent@127.0.0.1>"), ("Call-ID", f"broken-{index}"), ("CSeq", "1 INVITE"),
        ]  # fmt: skip
        base = [(n, value if n == name else v) for n, v in base]
        if name == "Contact":
            base.append((name, value))
        add(_message(headers=base, index=index))

    raw_variants = [
        _message(index=index).replace(b"\r\n", b"\n"),
        _message(index=index).replace(b"\r\n\r\n", b"\r\n"),
        _message(index=index).replace(b"Via:", b"Via"),
        _message(index=index).replace(b"From:", b"Fr om:"),
        _message(index=index).replace(b"To:", b"To\xff\xfe:"),
        _message(index=index).replace(b"Call-ID: ", b"Call-ID: \xc3\x28"),
        _message(index=index) * 3,
        b"\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n\r\n",
        b"\xef\xbb\xbf" + _message(index=index),
    ]
    for data in raw_variants:
        add(data)

    # Well-formed but hostile: must be refused, never create a call or a crash.
    add(_message("INVITE", body=SDP_NO_COMMON_CODEC, index=index))  # 488
    add(_message("INVITE", body="v=0\r\nm=audio 1 RTP/AVP 0\r\n", index=index))  # no c=: 400
    add(_message("INVITE", body="garbage sdp", index=index))
    add(_message("INVITE", body=SDP_OK.replace("39000", "99999"), index=index))
    add(_message("INVITE", body=SDP_OK.replace("RTP/AVP 0", "RTP/AVP x"), index=index))
    add(_message("INVITE", body=SDP_OK.replace("m=audio", "m=video"), index=index))
    add(_message("INVITE", body=SDP_OK.replace("IN IP4 127.0.0.1\r\nt", "IN\r\nt"), index=index))
    add(_message("INVITE", add=[("Content-Encoding", "gzip")], body="\x1f\x8b", index=index))
    for method in ("BYE", "CANCEL", "ACK", "INFO", "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE",
                   "PRACK", "UPDATE", "PUBLISH", "REGISTER", "FOO", "invite"):  # fmt: skip
        add(_message(method, body="", index=index))
    add(
        _message("INVITE", add=[], index=index, body=SDP_NO_COMMON_CODEC).replace(
            b"To: <sip:agent@127.0.0.1>", b"To: <sip:agent@127.0.0.1>;tag=unknown-dialog"
        )
    )
    for response in ("SIP/2.0 200 OK", "SIP/2.0 401 Unauthorized", "SIP/2.0 180 Ringing",
                     "SIP/2.0 487 Request Terminated", "SIP/2.0 603 Decline"):  # fmt: skip
        add(_message("INVITE", start_line=response, index=index))
    while len(corpus) < 260:
        # Mutations of a valid-looking request: flip, drop or repeat random bytes.
        data = bytearray(_message(rng.choice(["INVITE", "BYE", "OPTIONS"]), index=index))
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            operation = rng.randrange(3)
            if operation == 0:
                data[position] = rng.getrandbits(8)
            elif operation == 1:
                del data[position : position + rng.randint(1, 20)]
            else:
                data[position:position] = data[position : position + rng.randint(1, 20)] * 2
        add(bytes(data))
    return corpus


def hostile_rtp_datagrams(seed: int = 3550, count: int = 300) -> list[bytes]:
    """Random datagrams, truncated headers, wrong versions, foreign SSRCs, bad payload types."""
    rng = random.Random(seed)
    datagrams: list[bytes] = []
    for index in range(count):
        kind = index % 6
        if kind == 0:
            datagrams.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400))))
        elif kind == 1:
            datagrams.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 11))))
        elif kind == 2:  # version 1 or 3
            version = rng.choice([0, 1, 3]) << 6
            datagrams.append(
                struct.pack("!BBHII", version, 0, index, index * 160, 1) + b"\xff" * 160
            )
        elif kind == 3:  # valid header, foreign SSRC
            datagrams.append(
                struct.pack("!BBHII", 0x80, 0, rng.getrandbits(16), rng.getrandbits(32),
                            rng.getrandbits(32)) + bytes(rng.getrandbits(8) for _ in range(160))
            )  # fmt: skip
        elif kind == 4:  # unnegotiated payload type
            payload_type = rng.choice([3, 9, 18, 96, 127])
            datagrams.append(struct.pack("!BBHII", 0x80, payload_type, index, 0, 7) + b"\x00" * 160)
        else:  # CSRC count / extension / padding lies
            first = 0x80 | rng.choice([0x0F, 0x10, 0x20])
            datagrams.append(
                struct.pack("!BBHII", first, 0, index, 0, 9) + b"\x05" * rng.randint(0, 8)
            )
    return datagrams
