"""A deterministic corpus of malformed or hostile SIP messages and RTP datagrams.

None of the SIP messages may set up a call: each is broken, or asks for something the agent
must refuse. Seeded, so a failure names a reproducible corpus index.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------
# Issue 9: legal-but-unusual messages (each with the answer RFC 3261 asks for) and a seeded
# mutation fuzzer. `tests/kit/sip_corpus.py` puts them together with the RFC 4475 messages.


@dataclass(frozen=True)
class SipCase:
    """One corpus message and what the agent must do with it.

    ``expect``: the final statuses allowed; an empty set means the message must not be answered
    at all (a response, an ACK); None means unclassified (fuzz: no crash, transport alive).
    ``keep_addresses``: the message tests its own Via or Contact, which must not be
    re-addressed to the sender (an answer is only seen where its Via has rport).
    ``headers``: text each final response must contain (e.g. "Unsupported: foo").
    """

    name: str
    data: bytes
    expect: frozenset[int] | None
    verdict: str  # "valid" | "invalid" | "unusual" | "fuzz"
    keep_addresses: bool = False
    headers: tuple[str, ...] = ()
    note: str = ""


SDP_PCMU = SDP_OK + "a=sendrecv\r\n"
ANY_FINAL_INVITE = frozenset({200, 400, 488})
NOT_SUPPORTED = frozenset({405, 501})


def _request(
    method: str,
    name: str,
    *,
    target: str = "sip:agent@127.0.0.1",
    via: str | None = None,
    from_: str | None = None,
    to: str = "<sip:agent@127.0.0.1>",
    cseq: str | None = None,
    contact: str | None = "<sip:caller@127.0.0.1:39999>",
    extra: list[tuple[str, str]] | None = None,
    body: str | bytes = "",
    content_type: str | None = None,
    content_length: bool = True,
) -> bytes:
    """A well-formed request (Via/From/To/Call-ID/CSeq/Max-Forwards), one field changed."""
    body_bytes = body.encode() if isinstance(body, str) else body
    if content_type is None and body_bytes and method == "INVITE":
        content_type = "application/sdp"
    headers = [
        ("Via", via or f"SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bK-{name}"),
        ("From", from_ or f"<sip:caller@127.0.0.1>;tag=f-{name}"),
        ("To", to),
        ("Call-ID", f"unusual-{name}@127.0.0.1"),
        ("CSeq", cseq or f"1 {method}"),
        ("Max-Forwards", "70"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    headers += extra or []
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if content_length:
        headers.append(("Content-Length", str(len(body_bytes))))
    head = f"{method} {target} SIP/2.0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body_bytes


def _sdp(media: str = "m=audio 39000 RTP/AVP 0", extra: str = "a=rtpmap:0 PCMU/8000",
         connection: str = "c=IN IP4 127.0.0.1") -> str:  # fmt: skip
    lines = ["v=0", "o=x 1 1 IN IP4 127.0.0.1", "s=-", connection, "t=0 0", media, extra]
    return "".join(f"{line}\r\n" for line in lines if line)


build_request, build_sdp = _request, _sdp  # for the tests that build their own calls


def legal_unusual_messages() -> list[SipCase]:
    """Legal (or legal-looking) messages that real peers send, each with its RFC answer."""
    cases: list[SipCase] = []

    def case(
        name: str,
        data: bytes,
        expect: frozenset[int] | None,
        *,
        verdict: str = "unusual",
        keep_addresses: bool = False,
        headers: tuple[str, ...] = (),
        note: str = "",
    ) -> None:
        cases.append(
            SipCase(f"unusual/{name}", data, expect, verdict, keep_addresses, headers, note)
        )

    ok, four_hundred = frozenset({200}), frozenset({400})
    # Schemes and URIs in From/To (issue 9: silently dropped today).
    case("tel-from-options", _request("OPTIONS", "tel-from", from_="<tel:+15551234567>;tag=t1"), ok)
    case("tel-to-options", _request("OPTIONS", "tel-to", to="<tel:+15557654321>"), ok)
    case("tel-from-invite", _request("INVITE", "tel-from-inv", from_="<tel:+15551234567>;tag=t2",
                                     body=SDP_PCMU), ok)  # fmt: skip
    case("tel-bare-from", _request("OPTIONS", "tel-bare", from_="tel:+15551234567;tag=t3"), ok)
    case("sips-from", _request("OPTIONS", "sips-from", from_="<sips:caller@127.0.0.1>;tag=s1"), ok)
    case("upper-SIP-from", _request("OPTIONS", "upper-sip", from_="<SIP:caller@127.0.0.1>;tag=u"),
         ok)  # fmt: skip
    case("upper-SIP-ruri", _request("OPTIONS", "upper-ruri", target="SIP:agent@127.0.0.1"), ok)
    case("cseq-tab", _request("OPTIONS", "cseq-tab", cseq="1\tOPTIONS"), ok)
    case("cseq-zero", _request("OPTIONS", "cseq-zero", cseq="0 OPTIONS"), ok)
    case("cseq-max", _request("OPTIONS", "cseq-max", cseq=f"{2**31 - 1} OPTIONS"), ok)
    case(
        "unicode-display",
        _request("OPTIONS", "unicode-dn", from_='"Zoë Ångström 日本" <sip:zoe@127.0.0.1>;tag=z'),
        ok,
    )
    case("folded-from", _request("OPTIONS", "folded", from_="<sip:caller@127.0.0.1>\r\n ;tag=fold"),
         ok)  # fmt: skip
    case("no-max-forwards", _request("OPTIONS", "no-mf").replace(b"Max-Forwards: 70\r\n", b""), ok)
    case(
        "max-forwards-zero",
        _request("OPTIONS", "mf0").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        ok,
    )
    case("no-content-length", _request("OPTIONS", "no-cl", content_length=False), ok)
    case(
        "leading-crlf",
        b"\r\n\r\n" + _request("OPTIONS", "leading-crlf"),
        None,
        note="RFC 3261 7.5 asks to ignore CRLFs before the start line on stream transports only",
    )
    case("compact-forms", b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
         b"v: SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bK-compact\r\n"
         b"f: <sip:caller@127.0.0.1>;tag=c\r\nt: <sip:agent@127.0.0.1>\r\n"
         b"i: unusual-compact@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nm: <sip:caller@127.0.0.1>\r\n"
         b"l: 0\r\n\r\n", ok)  # fmt: skip
    case("odd-header-case", _request("OPTIONS", "case").replace(b"Call-ID:", b"cALL-iD:")
         .replace(b"CSeq:", b"CSEQ:"), ok)  # fmt: skip
    case("via-list", _request("OPTIONS", "via-list",
                              via="SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bK-vl1, "
                                  "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-vl2"), ok)  # fmt: skip
    case(
        "via-ipv6-rport",
        _request("OPTIONS", "via-v6", via="SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-v6;rport"),
        ok,
        keep_addresses=True,
        note="rport: the answer goes to the source, seen by the test",
    )
    case("long-call-id", _request("OPTIONS", "long-cid").replace(
        b"unusual-long-cid@", b"unusual-long-cid-" + b"x" * 200 + b"@"), ok)  # fmt: skip
    case(
        "proxy-require",
        _request("OPTIONS", "proxy-req", extra=[("Proxy-Require", "foo")]),
        ok,
        note="RFC 3261 8.2.2.3: Proxy-Require is for proxies; a UAS ignores it",
    )
    case("accept-sdp", _request("OPTIONS", "accept-sdp", extra=[("Accept", "application/sdp")]), ok)
    # Via addresses that cannot be sent to (issue 9: sendto raised and SIP died for good).
    case("via-port-65536", _request("OPTIONS", "via-65536",
                                    via="SIP/2.0/UDP 127.0.0.1:65536;branch=z9hG4bK-p65536"),
         None, keep_addresses=True, note="400 or dropped; the transport must live")  # fmt: skip
    case("via-port-20-digits", _request("OPTIONS", "via-20d",
                                        via="SIP/2.0/UDP 127.0.0.1:99999999999999999999"
                                            ";branch=z9hG4bK-p20"),
         None, keep_addresses=True, note="400 or dropped; the transport must live")  # fmt: skip
    case("via-port-zero", _request("OPTIONS", "via-0",
                                   via="SIP/2.0/UDP 127.0.0.1:0;branch=z9hG4bK-p0"),
         None, keep_addresses=True, note="400 or dropped; the transport must live")  # fmt: skip
    case(
        "contact-nul-host",
        _request(
            "INVITE",
            "contact-nul",
            body=SDP_PCMU,
            via="SIP/2.0/UDP 127.0.0.1:39999;branch=z9hG4bK-cnul;rport",
            contact="<sip:caller@127.0.0.1\x00.evil>",
        ),
        four_hundred,
        keep_addresses=True,
        note="a NUL in a host is not a host (issue 9: the no-ACK BYE raised TypeError)",
    )
    # SDP that must still get a final answer (issue 9: no final response today).
    for label, pt in (("128", "128"), ("4294967296", "4294967296"), ("minus-1", "-1")):
        case(f"sdp-pt-{label}", _request("INVITE", f"pt-{label}", body=_sdp(
            f"m=audio 39000 RTP/AVP {pt}", "")), frozenset({400, 488}))  # fmt: skip
    for label, pt in (("128", "128"), ("4294967296", "4294967296"), ("minus-1", "-1")):
        offer = _sdp(f"m=audio 39000 RTP/AVP 0 {pt}", "a=rtpmap:0 PCMU/8000")
        case(f"sdp-pcmu-and-pt-{label}", _request("INVITE", f"pcmu-pt-{label}", body=offer),
             ANY_FINAL_INVITE)  # fmt: skip
    case(
        "sdp-dynamic-pcmu",
        _request("INVITE", "pt96", body=_sdp("m=audio 39000 RTP/AVP 96", "a=rtpmap:96 PCMU/8000")),
        ok,
        headers=("a=rtpmap:96 PCMU/8000",),
        note="a dynamic PT mapped to PCMU by name",
    )
    case("sdp-ptime-inf", _request("INVITE", "ptime-inf", body=_sdp(
        extra="a=rtpmap:0 PCMU/8000\r\na=ptime:inf")), ANY_FINAL_INVITE)  # fmt: skip
    case("sdp-c-hostname", _request("INVITE", "c-host", body=_sdp(
        connection="c=IN IP4 slow.example.com")), frozenset({488}),
         note="no DNS on the event loop: refuse a non-literal address")  # fmt: skip
    case(
        "sdp-c-ipv6",
        _request("INVITE", "c-ip6", body=_sdp(connection="c=IN IP6 fd00::2")),
        frozenset({488}),
        note="the agent is IPv4-only",
    )
    case("sdp-pcma-pcmu", _request("INVITE", "pcma-pcmu", body=_sdp(
        "m=audio 39000 RTP/AVP 8 0", "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000")),
         ok)  # fmt: skip
    case(
        "sdp-port-zero",
        _request("INVITE", "port0", body=_sdp("m=audio 0 RTP/AVP 0")),
        frozenset({488}),
        note="a rejected (port 0) audio stream is no usable offer",
    )
    case("sdp-event-only", _request("INVITE", "event-only", body=_sdp(
        "m=audio 39000 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000")),
         frozenset({488}))  # fmt: skip
    case("content-type-upper", _request("INVITE", "ct-upper", body=SDP_PCMU,
                                        content_type="Application/SDP"), ok)  # fmt: skip
    case("content-type-params", _request("INVITE", "ct-params", body=SDP_PCMU,
                                         content_type="application/sdp; charset=utf-8"),
         ok)  # fmt: skip
    # RFC 3261 8.2.2 and 8.2.3 answers.
    case(
        "require-foo-options",
        _request("OPTIONS", "req-foo", extra=[("Require", "foo")]),
        frozenset({420}),
        headers=("Unsupported: foo",),
    )
    case("require-foo-invite", _request("INVITE", "req-foo-inv", body=SDP_PCMU,
                                        extra=[("Require", "foo")]), frozenset({420}),
         headers=("Unsupported: foo",))  # fmt: skip
    case("require-100rel", _request("INVITE", "req-100rel", body=SDP_PCMU,
                                    extra=[("Require", "100rel")]), frozenset({420}),
         headers=("Unsupported: 100rel",))  # fmt: skip
    case("supported-100rel", _request("INVITE", "sup-100rel", body=SDP_PCMU,
                                      extra=[("Supported", "100rel, timer")]), ok)  # fmt: skip
    case("ruri-scheme-invite", _request("INVITE", "ruri-xmpp", target="xmpp:agent@127.0.0.1",
                                        body=SDP_PCMU), frozenset({416}))  # fmt: skip
    case("ruri-scheme-options", _request("OPTIONS", "ruri-foo", target="foo:bar"), frozenset({416}))
    case("content-type-unknown", _request("INVITE", "ct-unknown", body="hello",
                                          content_type="application/x-unknown"),
         frozenset({415}), headers=("Accept:",))  # fmt: skip
    case("content-encoding-gzip", _request("INVITE", "ce-gzip", body=SDP_PCMU,
                                           extra=[("Content-Encoding", "gzip")]),
         frozenset({415}), note="RFC 3261 8.2.3: 415 with Accept-Encoding")  # fmt: skip
    case("accept-unsatisfiable", _request("INVITE", "accept-none", body=SDP_PCMU,
                                          extra=[("Accept", "text/nobodyKnowsThis")]),
         frozenset({406}))  # fmt: skip
    # Methods outside a dialog.
    case(
        "bye-no-dialog",
        _request("BYE", "bye-nd", to="<sip:agent@127.0.0.1>;tag=nd"),
        frozenset({481}),
    )
    case(
        "info-no-dialog",
        _request("INFO", "info-nd", to="<sip:agent@127.0.0.1>;tag=nd"),
        frozenset({481}),
    )
    case("cancel-no-transaction", _request("CANCEL", "cancel-nt"), frozenset({481}))
    case(
        "ack-no-transaction",
        _request("ACK", "ack-nt", to="<sip:agent@127.0.0.1>;tag=nd"),
        frozenset(),
        note="an ACK is never answered",
    )
    case("register", _request("REGISTER", "register", target="sip:127.0.0.1",
                              extra=[("Expires", "3600")]), frozenset({405}),
         headers=("Allow:",), note="not a registrar")  # fmt: skip
    for method in ("SUBSCRIBE", "PUBLISH", "MESSAGE"):
        case(f"method-{method.lower()}", _request(method, f"m-{method.lower()}"), NOT_SUPPORTED)
    case("method-unknown", _request("FOO", "m-foo"), frozenset({501}))
    case(
        "method-lowercase-invite",
        _request("invite", "m-lower"),
        frozenset({501}),
        note="methods are case-sensitive: 'invite' is an unknown extension method",
    )
    return cases


# -- seeded mutation fuzzing ------------------------------------------------------------------

HOSTILE_HOSTS = [
    "127.0.0.1:65536", "127.0.0.1:0", "127.0.0.1:-1", "127.0.0.1:99999999999999999999",
    "127.0.0.1:abc", "127.0.0.1:", "[::1]:5060", "[::1", "127.0.0.1\x00evil", "", " ",
    "0.0.0.0", "127.0.0.1.", "300.1.1.1", "a" * 300, "ünïcödé.invalid", "exa mple.invalid",
    "-bad-.invalid", "127.0.0.1:5060:5060", "[127.0.0.1]", "localhost:65535", "127.1",
    "127.0.0.1:\u0665\u0660\u0666\u0660", "127.0.0.1:\u00b2", "%00", "..", "x" * 64 + ".invalid",
]  # fmt: skip
HOSTILE_NUMBERS = [
    "0", "-1", "65536", "2147483648", "4294967296", "18446744073709551616",
    "99999999999999999999", "1e3", "0x10", "", " ", "+5", "1.5", "inf", "nan", "\u00b2",
    "\u0663", "007", "1 2", "9" * 400,
]  # fmt: skip
ODD_UNICODE = [
    "\u202e", "\u200b", "\ufeff", "\U0001f600", "\u0000", "\uffff", "\u00e9", "\u4e2d",
    "\u0301", "\u2028",
]  # fmt: skip
ODD_BYTES = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"]
SDP_LINE_BREAKERS = [
    "m=audio", "m=audio 39000", "m=audio 39000 RTP/AVP", "m=audio x RTP/AVP 0",
    "m=audio 39000/2 RTP/AVP 0", "m=audio 70000 RTP/AVP 0", "m=audio -5 RTP/AVP 0",
    "m=audio 39000 RTP/AVP 0 0 0 0", "m=audio 39000 RTP/SAVP 0", "m=video 39000 RTP/AVP 0",
    "c=IN IP4", "c=IN", "c=IN IP4 127.0.0.1/127", "c=IN IP4 127.0.0.1/127/3", "c=IN IP4 ",
    "c=IN IP4 0.0.0.0", "c=IN IP4 999.0.0.1", "c=IN IP4 127.0.0.1\x00", "c=IN IP6 ::1",
    "c=IN IP4 " + "a" * 300, "c=IN IP4 ünï.invalid", "a=rtpmap:0 PCMU/0", "a=rtpmap:0 PCMU/-8000",
    "a=rtpmap:0 PCMU", "a=rtpmap:x PCMU/8000", "a=rtpmap:0", "a=rtpmap:96 PCMU/8000/1/2",
    "a=rtpmap:0 PCMU/99999999999999999999", "a=ptime:0", "a=ptime:-20", "a=ptime:1e309",
    "a=ptime:nan", "a=ptime:", "a=maxptime:0", "a=sendonly", "a=inactive", "a=recvonly",
    "a=fmtp:101 0-99999999999", "a=rtpmap:101 telephone-event/0", "b=AS:-1", "t=1 0", "v=1",
    "o=", "s=", "=", "a=", "m=audio 39000 RTP/AVP 0\r\nm=audio 39002 RTP/AVP 8",
]  # fmt: skip
NUMERIC_HEADERS = [
    ("CSeq", "{n} {method}"), ("Content-Length", "{n}"), ("Max-Forwards", "{n}"),
    ("Expires", "{n}"), ("Via", "SIP/2.0/UDP 127.0.0.1:{n};branch=z9hG4bKnum"),
    ("Contact", "<sip:caller@127.0.0.1:{n}>"), ("Contact", "<sip:caller@127.0.0.1>;expires={n}"),
    ("Min-SE", "{n}"), ("Session-Expires", "{n}"), ("RSeq", "{n}"), ("Retry-After", "{n}"),
]  # fmt: skip
FUZZ_KINDS = (
    "flip",
    "delete-header",
    "duplicate-header",
    "number",
    "unicode",
    "nul",
    "truncate",
    "sdp",
    "host",
    "line-ends",
    "structure",
    "multi",
)
FUZZ_METHODS = ("INVITE", "OPTIONS", "BYE", "ACK", "CANCEL", "REGISTER")


def _fuzz_base(rng: random.Random, method: str, tag: str) -> bytes:
    body = SDP_PCMU if method == "INVITE" else ""
    to = "<sip:agent@127.0.0.1>" + (";tag=fz" if method in ("BYE", "ACK") else "")
    return _request(method, tag, to=to, body=body, extra=[("Expires", "60")] if method ==
                    "REGISTER" else None, target="sip:agent@127.0.0.1:5060").replace(
        b"unusual-", b"fuzz-")  # fmt: skip


def _header_lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def mutate(rng: random.Random, base: bytes, kind: str, method: str) -> bytes:
    """One mutation of ``kind`` applied to a valid request ``base``."""
    if len(base) < 2:
        return base + b"\x00"
    lines, body = _header_lines(base)
    if len(lines) < 2 and kind in ("delete-header", "duplicate-header", "line-ends"):
        kind = "flip"
    if kind == "flip":
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        return bytes(data)
    if kind == "delete-header":
        for _ in range(rng.randint(1, 3)):
            if len(lines) > 1:
                del lines[rng.randrange(1, len(lines))]
        return _join(lines, body)
    if kind == "duplicate-header":
        for _ in range(rng.randint(1, 3)):
            index = rng.randrange(1, len(lines))
            copy = lines[index]
            if rng.random() < 0.5:  # a conflicting duplicate rather than an identical one
                name, _, value = copy.partition(b":")
                copy = name + b": " + value.strip()[::-1]
            lines.insert(rng.randrange(1, len(lines) + 1), copy)
        return _join(lines, body)
    if kind == "number":
        name, template = rng.choice(NUMERIC_HEADERS)
        value = template.format(n=rng.choice(HOSTILE_NUMBERS), method=method)
        lines = [line for line in lines if not line.lower().startswith(name.lower().encode() + b":")
                 or rng.random() < 0.2]  # fmt: skip
        lines.insert(rng.randrange(1, len(lines) + 1), f"{name}: {value}".encode())
        return _join(lines, body)
    if kind == "unicode":
        index = rng.randrange(len(lines))
        text = lines[index].decode("utf-8", "surrogateescape")
        position = rng.randrange(len(text) + 1)
        if rng.random() < 0.6:
            text = text[:position] + rng.choice(ODD_UNICODE) * rng.randint(1, 3) + text[position:]
            lines[index] = text.encode("utf-8", "surrogatepass")
        else:
            raw = lines[index]
            lines[index] = raw[:position] + rng.choice(ODD_BYTES) + raw[position:]
        return _join(lines, body)
    if kind == "nul":
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data) + 1) : 0] = b"\x00" * rng.randint(1, 3)
        return bytes(data)
    if kind == "truncate":
        return base[: rng.randrange(1, len(base))]
    if kind == "sdp":
        sdp_lines = (body or SDP_PCMU.encode()).split(b"\r\n")
        breaker = rng.choice(SDP_LINE_BREAKERS).encode("utf-8", "surrogatepass")
        prefix = breaker[:2]
        same = [i for i, line in enumerate(sdp_lines) if line.startswith(prefix)]
        if same and rng.random() < 0.7:
            sdp_lines[rng.choice(same)] = breaker
        else:
            sdp_lines.insert(rng.randrange(len(sdp_lines)), breaker)
        new_body = b"\r\n".join(sdp_lines)
        lines = [line for line in lines if not line.lower().startswith(b"content-length:")]
        if not any(line.lower().startswith(b"content-type:") for line in lines):
            lines.append(b"Content-Type: application/sdp")
        lines.append(b"Content-Length: %d" % len(new_body))
        return _join(lines, new_body)
    if kind == "host":
        host = rng.choice(HOSTILE_HOSTS)
        where = rng.choice(["Via", "Contact", "Route", "Record-Route", "c=", "ruri"])
        if where == "Via":
            new = f"Via: SIP/2.0/UDP {host};branch=z9hG4bKhost{rng.getrandbits(16)}"
            lines = [line for line in lines if not line.startswith(b"Via:")]
            lines.insert(1, new.encode("utf-8", "surrogatepass"))
        elif where == "ruri":
            parts = lines[0].split(b" ")
            lines[0] = b" ".join([parts[0], f"sip:agent@{host}".encode(), *parts[2:]])
        elif where == "c=":
            new_body = (body or SDP_PCMU.encode()).replace(
                b"c=IN IP4 127.0.0.1", f"c=IN IP4 {host}".encode())  # fmt: skip
            lines = [line for line in lines if not line.lower().startswith(b"content-length:")]
            lines.append(b"Content-Length: %d" % len(new_body))
            return _join(lines, new_body)
        else:
            lines.insert(rng.randrange(1, len(lines) + 1), f"{where}: <sip:x@{host};lr>".encode())
            if where == "Contact":
                lines = [line for line in lines if not line.startswith(b"Contact: <sip:caller")]
        return _join(lines, body)
    if kind == "line-ends":
        style = rng.randrange(4)
        if style == 0:
            return base.replace(b"\r\n", b"\n")
        if style == 1:
            return base.replace(b"\r\n", b"\r")
        if style == 2:  # a folded continuation with a tab, mid-header
            index = rng.randrange(1, len(lines))
            name, _, value = lines[index].partition(b":")
            lines[index] = name + b":\r\n\t" + value.strip()
            return _join(lines, body)
        return base.replace(b"\r\n", rng.choice([b"\n\r", b"\r\r\n", b"\r\n "]), 2)
    if kind == "structure":
        choice = rng.randrange(5)
        if choice == 0:
            lines.insert(rng.randrange(1, len(lines) + 1), b"NoColonHere")
        elif choice == 1:
            lines.append(b"X-Long: " + b"A" * rng.choice([1000, 8000, 15000]))
        elif choice == 2:
            lines += [b"X-H%d: v" % i for i in range(rng.choice([100, 300, 1000]))]
        elif choice == 3:
            lines.append(b"X" * 2000 + b": v")
        else:
            lines.append(b": empty-name")
        return _join(lines, body)
    # "multi": several mutations stacked
    data = base
    for _ in range(rng.randint(2, 4)):
        data = mutate(rng, data, rng.choice(FUZZ_KINDS[:-1]), method)
    return data


def fuzzed_sip_message(seed: int, index: int) -> tuple[str, bytes]:
    """The ``index``-th message of fuzz run ``seed``: (kind/method label, datagram)."""
    rng = random.Random(f"{seed}:{index}")
    kind = FUZZ_KINDS[index % len(FUZZ_KINDS)]
    method = FUZZ_METHODS[(index // len(FUZZ_KINDS)) % len(FUZZ_METHODS)]
    base = _fuzz_base(rng, method, f"{seed}-{index}")
    return f"{kind}/{method}", mutate(rng, base, kind, method)


def fuzzed_sip_messages(seed: int = 9, count: int = 1100) -> list[SipCase]:
    """``count`` deterministic mutations of valid INVITE/OPTIONS/BYE/ACK/CANCEL/REGISTER."""
    cases = []
    for index in range(count):
        label, data = fuzzed_sip_message(seed, index)
        keep_addresses = label.startswith(("host/", "multi/"))
        name = f"fuzz/{seed}/{index:04d}/{label}"
        cases.append(SipCase(name, data, None, "fuzz", keep_addresses))
    return cases


# -- in-dialog mutations: requests inside a call the fuzzer set up itself ----------------------


@dataclass(frozen=True)
class Dialog:
    """What an in-dialog request needs: the caller's side of a confirmed call."""

    call_id: str
    local_tag: str  # the caller's From tag
    remote_tag: str  # the agent's To tag
    target: str  # the agent's Contact URI
    sender: str  # "host:port" of the caller's socket
    cseq: int  # the next CSeq number to use


IN_DIALOG_KINDS = (
    "reinvite-sdp", "reinvite-host", "reinvite-hold", "info", "notify", "bye", "cancel",
    "ack", "update", "refer", "options", "reinvite-number",
)  # fmt: skip
INFO_BODIES = [
    "Signal=5\r\nDuration=160\r\n", "Signal=\r\nDuration=-1\r\n", "Signal=55555\r\n",
    "Signal=\x00\r\n", "Duration=99999999999999999999\r\n", "Signal=A\r\nDuration=inf\r\n",
    "\xff\xfe", "Signal=" + "1" * 5000 + "\r\n", "", "Signal=*#\r\n",
]  # fmt: skip
SIPFRAG_BODIES = [
    "SIP/2.0 200 OK", "SIP/2.0 100 Trying", "SIP/2.0", "SIP/2.0 abc", "SIP/2.0 99999999999 x",
    "", "garbage", "SIP/2.0 603 Declined\r\nVia: x", "\x00", "SIP/2.0 -1",
]  # fmt: skip


def in_dialog_message(seed: int, index: int, dialog: Dialog) -> tuple[str, bytes]:
    """The ``index``-th in-dialog mutation of run ``seed`` for ``dialog`` (deterministic)."""
    rng = random.Random(f"dialog:{seed}:{index}")
    kind = IN_DIALOG_KINDS[index % len(IN_DIALOG_KINDS)]
    method = {"info": "INFO", "notify": "NOTIFY", "bye": "BYE", "cancel": "CANCEL",
              "ack": "ACK", "update": "UPDATE", "refer": "REFER",
              "options": "OPTIONS"}.get(kind, "INVITE")  # fmt: skip
    body, content_type, extra = "", None, []
    if method == "INVITE":
        body = SDP_PCMU.replace("o=x 1 1", f"o=x 1 {index + 2}")
    if kind == "reinvite-hold":
        body = body.replace("a=sendrecv", rng.choice(["a=sendonly", "a=inactive", "a=recvonly"]))
        if rng.random() < 0.5:
            body = body.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    elif kind == "info":
        body, content_type = rng.choice(INFO_BODIES), "application/dtmf-relay"
    elif kind == "notify":
        body, content_type = rng.choice(SIPFRAG_BODIES), "message/sipfrag;version=2.0"
        extra = [("Event", rng.choice(["refer", "refer;id=1", "", "x" * 300])),
                 ("Subscription-State", rng.choice(["active", "terminated;reason=noresource",
                                                    ""]))]  # fmt: skip
    elif kind == "refer":
        extra = [("Refer-To", rng.choice(["<sip:x@127.0.0.1:1>", "<sip:x@127.0.0.1:65536>",
                                          "<tel:+1>", "", "<sip:x@\x00>"]))]  # fmt: skip
    elif kind == "ack" and rng.random() < 0.5:
        body = rng.choice(["v=0\r\n", SDP_PCMU, "garbage"])
        content_type = "application/sdp"
    cseq = dialog.cseq if method not in ("ACK", "CANCEL") else max(dialog.cseq - 1, 1)
    if kind == "bye" and rng.random() < 0.5:
        cseq = rng.choice([0, 1, 2**31 - 1, dialog.cseq - 5 if dialog.cseq > 5 else 1])
    data = _request(
        method, f"d-{seed}-{index}", target=dialog.target,
        via=f"SIP/2.0/UDP {dialog.sender};branch=z9hG4bKdlg-{seed}-{index};rport",
        from_=f"<sip:caller@127.0.0.1>;tag={dialog.local_tag}",
        to=f"<sip:agent@127.0.0.1>;tag={dialog.remote_tag}",
        cseq=f"{cseq} {method}", contact=f"<sip:caller@{dialog.sender}>", extra=extra,
        body=body.encode("utf-8", "surrogatepass"), content_type=content_type,
    ).replace(f"unusual-d-{seed}-{index}@127.0.0.1".encode(), dialog.call_id.encode())  # fmt: skip
    if kind == "reinvite-sdp":
        data = mutate(rng, data, "sdp", method)
    elif kind == "reinvite-host":
        data = mutate(rng, data, "host", method)
    elif kind == "reinvite-number":
        data = mutate(rng, data, "number", method)
    return f"{kind}/{method}", data
