"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264), pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from ipaddress import IPv4Address

PCMU = 0
PCMA = 8
# Our preference order; the answer carries exactly one audio codec (pyVoIP listed them all).
SUPPORTED_AUDIO = {PCMU: "PCMU", PCMA: "PCMA"}
STATIC_NAMES = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 18: "G729"}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The body is not an SDP we can read."""


class NotAcceptableHere(Exception):
    """A readable offer we cannot take: answer 488 Not Acceptable Here (RFC 3261 21.4.26)."""


class NoCommonCodec(NotAcceptableHere):
    """The offer has no codec we speak."""


class UnusableAddress(NotAcceptableHere):
    """The media address is not an IPv4 literal: IPv6 (we are IPv4-only) or a host name, which
    would have to be resolved (never on the event loop, and never per packet)."""


def _payload_type(text: str) -> int:
    if not text.isdigit() or int(text) > 127:  # RFC 3550: 7 bits
        raise SdpError(f"bad payload type {text[:12]!r}")
    return int(text)


def _connection_address(value: str) -> str:
    """`IN IP4 192.0.2.1` -> the address; IPv6 or a name -> UnusableAddress."""
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN":
        raise SdpError(f"bad c= line {value[:60]!r}")
    address = parts[2].split("/")[0]
    if parts[1] != "IP4":
        raise UnusableAddress(f"{parts[1][:8]} media address {address[:40]!r}: IPv4 only")
    try:
        IPv4Address(address)
    except ValueError as error:
        raise UnusableAddress(f"media address {address[:40]!r} is not an IPv4 literal") from error
    return address


@dataclass(slots=True)
class MediaOffer:
    address: str
    port: int
    protocol: str
    payload_types: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # pt -> (name, rate)
    direction: str = "sendrecv"
    ptime: int | None = None

    def codec_name(self, payload_type: int) -> tuple[str, int]:
        if payload_type in self.rtpmap:
            return self.rtpmap[payload_type]
        if payload_type in STATIC_NAMES:
            return STATIC_NAMES[payload_type], 8000
        return "", 0


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    remote_address: str
    remote_port: int
    payload_type: int
    codec: str
    telephone_event_pt: int | None
    direction: str  # our direction in the answer

    @property
    def on_hold(self) -> bool:
        return self.direction in ("recvonly", "inactive") or self.remote_address == "0.0.0.0"


def parse_audio_offer(body: bytes | str) -> MediaOffer:
    """The first audio m= section of an SDP body, with its effective connection address."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    session_address = ""
    session_direction = "sendrecv"
    media: MediaOffer | None = None
    in_other_media = False
    for raw_line in text.replace("\r\n", "\n").split("\n"):
        line = raw_line.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if media is not None:
                break  # only the first audio stream is used
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                in_other_media = True
                continue
            in_other_media = False
            port_text = parts[1].split("/")[0]
            if not port_text.isdigit() or int(port_text) > 65535:
                raise SdpError(f"bad media port in {value[:60]!r}")
            port = int(port_text)
            payload_types = [_payload_type(pt) for pt in parts[3:]]
            media = MediaOffer(session_address, port, parts[2], payload_types)
            media.direction = session_direction
        elif in_other_media:
            continue
        elif kind == "c":
            address = _connection_address(value)
            if media is None:
                session_address = address
            else:
                media.address = address
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            if name in DIRECTIONS:
                if media is None:
                    session_direction = name
                else:
                    media.direction = name
            elif media is not None and name == "rtpmap":
                pt_text, _, encoding = attr_value.partition(" ")
                codec, _, rate_text = encoding.partition("/")
                rate = rate_text.split("/")[0]
                if not rate.isdigit() or len(rate) > 6:
                    raise SdpError(f"bad rtpmap {attr_value[:60]!r}")
                media.rtpmap[_payload_type(pt_text)] = (codec, int(rate))
            elif media is not None and name == "ptime":
                # Advisory (RFC 4566): "inf", "nan" or junk is ignored, never fatal.
                ptime = attr_value.strip()
                media.ptime = int(ptime) if ptime.isdigit() and len(ptime) < 5 else None
    if media is None:
        raise SdpError("no audio m= line in SDP")
    if not media.address:
        raise SdpError("no connection address (c=) for the audio stream")
    return media


_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def negotiate(offer: MediaOffer) -> NegotiatedMedia:
    """Pick PCMU, else PCMA, plus one telephone-event/8000 if offered."""
    if offer.port == 0 or not offer.protocol.upper().startswith("RTP/AVP"):
        raise NoCommonCodec("audio stream rejected or not RTP/AVP")
    offered = {pt: offer.codec_name(pt) for pt in offer.payload_types}
    chosen: int | None = None
    for wanted in SUPPORTED_AUDIO:
        for pt, (name, rate) in offered.items():
            if name.upper() == SUPPORTED_AUDIO[wanted] and rate == 8000:
                chosen = pt
                break
        if chosen is not None:
            break
    if chosen is None:
        names = ", ".join(f"{pt}:{name or '?'}" for pt, (name, _) in offered.items())
        raise NoCommonCodec(f"no PCMU/PCMA in offer ({names})")
    telephone_event = next(
        (
            pt
            for pt, (name, rate) in offered.items()
            if name.lower() == "telephone-event" and rate == 8000
        ),
        None,
    )
    codec = offered[chosen][0].upper()
    return NegotiatedMedia(
        remote_address=offer.address,
        remote_port=offer.port,
        payload_type=chosen,
        codec=codec,
        telephone_event_pt=telephone_event,
        direction=_ANSWER_DIRECTION.get(offer.direction, "sendrecv"),
    )


def build_answer(
    media: NegotiatedMedia,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    user: str = "sipagent",
) -> str:
    lines = [
        "v=0",
        f"o={user} {session_id} {session_version} IN IP4 {local_address}",
        "s=sipagent",
        f"c=IN IP4 {local_address}",
        "t=0 0",
    ]
    payload_types = [media.payload_type]
    if media.telephone_event_pt is not None:
        payload_types.append(media.telephone_event_pt)
    lines.append(f"m=audio {local_port} RTP/AVP {' '.join(map(str, payload_types))}")
    lines.append(f"a=rtpmap:{media.payload_type} {media.codec}/8000")
    if media.telephone_event_pt is not None:
        lines.append(f"a=rtpmap:{media.telephone_event_pt} telephone-event/8000")
        lines.append(f"a=fmtp:{media.telephone_event_pt} 0-15")
    lines += ["a=ptime:20", f"a={media.direction}"]
    return "\r\n".join(lines) + "\r\n"


def build_offer(
    *, local_address: str, local_port: int, session_id: int, session_version: int = 1
) -> str:
    """Our offer for outbound calls: PCMU, PCMA and telephone-event 101."""
    return (
        "\r\n".join(
            [
                "v=0",
                f"o=sipagent {session_id} {session_version} IN IP4 {local_address}",
                "s=sipagent",
                f"c=IN IP4 {local_address}",
                "t=0 0",
                f"m=audio {local_port} RTP/AVP 0 8 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
                "a=sendrecv",
            ]
        )
        + "\r\n"
    )


def sdp_from_body(content_type: str, body: bytes) -> bytes:
    """The SDP of a request body: the body itself, or the application/sdp part of a
    multipart/mixed body (RFC 5621; RFC 4475 3.1.1.11 mpart01). b"" when there is none."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in ("", "application/sdp"):
        return body
    if media_type != "multipart/mixed":
        return b""
    message = BytesParser(policy=email_policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("utf-8", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise SdpError("multipart body without parts")
    for part in message.walk():
        if part.get_content_type() == "application/sdp":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    return b""
