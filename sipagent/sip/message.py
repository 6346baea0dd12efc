"""sipagent's SIP message: a strict RFC 3261 parser (our own code, not pyVoIP's).

`SipMessage` parses one datagram into its start line, header fields (compact forms, any
case, repeated and comma-joined values kept in order), the checked body, and the values the
agent acts on (top Via, From/To, CSeq), each validated when parsed (see `headers`). A
message we cannot answer at all raises `SipMessageError`; a request with a fault we can
answer keeps it in `defects` (the endpoint answers 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipagent.sip.headers import (
    TOKEN_CHARS,
    HeaderError,
    NameAddr,
    Via,
    check_request_uri,
    parse_cseq,
    parse_name_addr,
    parse_via,
)
from sipagent.sip.uri import name_addr_uri, split_header_values

MAX_MESSAGE_BYTES = 16384
_SINGLE_VALUED = ("From", "To", "Call-ID", "CSeq", "Content-Length", "Max-Forwards")
_MULTI_VALUED = ("Via", "Record-Route", "Route", "Contact")
_COMPACT = {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "e": "Content-Encoding", "s": "Subject",
    "o": "Event", "r": "Refer-To", "u": "Allow-Events", "b": "Referred-By",
}  # fmt: skip
_VERSION = re.compile(r"^SIP/\d+\.\d+$")
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type",
        "Record-Route", "Route", "Max-Forwards", "WWW-Authenticate", "Proxy-Authenticate",
        "Authorization", "Proxy-Authorization", "Expires", "Min-Expires", "Allow", "Supported",
        "User-Agent", "Server", "Content-Encoding", "Require", "Event", "Refer-To",
    )
}  # fmt: skip


class SipMessageError(ValueError):
    """A datagram that is not a valid SIP message: logged and dropped by the endpoint."""

    @property
    def kind(self) -> str:
        """The reason without the offending values, for counters ("bad CSeq", ...)."""
        return re.sub(r"\s*(['\"(].*|\d.*)$", "", str(self)).strip() or "malformed"


def _canonical_name(name: str) -> str:
    lowered = name.lower()
    if lowered in _COMPACT:
        return _COMPACT[lowered]
    return _CANONICAL.get(lowered) or "-".join(part.capitalize() for part in lowered.split("-"))


class SipMessage:
    """One received SIP request or response (RFC 3261 7), parsed strictly (pyVoIP D8, D9)."""

    def __init__(self, data: bytes, source: tuple[str, int] | None = None) -> None:
        self.source = source
        self.raw = data
        self.is_request = False
        self.version = ""
        self.heading = b""
        self.fields: list[tuple[str, str]] = []
        self.content = b""
        self.method = ""
        self.request_uri = ""
        self.status_code = 0
        self.reason = ""
        self.defects: list[str] = []  # why a request deserves 400 Bad Request (RFC 3261 21.4.1)
        self.via: list[Via] = []
        self.from_addr: NameAddr | None = None
        self.to_addr: NameAddr | None = None
        self._cseq: tuple[int, str] = (0, "")
        try:
            self._parse(data)
        except SipMessageError:
            raise
        except (ValueError, IndexError, KeyError, UnicodeDecodeError) as error:
            raise SipMessageError(f"unparseable header value: {error}") from error

    # pyVoIP D9: it splits at every CRLFCRLF and keeps the first header of each name.
    def _parse(self, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            raise SipMessageError(f"oversize message ({len(data)} bytes)")
        data = data.lstrip(b"\r\n")  # RFC 3261 7.5: CRLFs before the start line are ignored
        head, separator, body = data.partition(b"\r\n\r\n")
        if not separator and data.endswith(b"\r\n"):
            head, body = data[:-2], b""  # the datagram ends the message (RFC 3261 18.3)
        elif not separator:
            raise SipMessageError("no empty line after the headers")
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SipMessageError("headers are not UTF-8") from error
        lines: list[str] = []
        for line in text.split("\r\n"):
            if line[:1] in (" ", "\t") and lines:
                lines[-1] += " " + line.strip()  # RFC 3261 7.3.1 line folding
            else:
                lines.append(line)
        self._parse_start_line(lines[0])
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or not name or not set(name) <= TOKEN_CHARS:
                raise SipMessageError(f"malformed header line {line[:60]!r}")
            canonical = _canonical_name(name)
            value = value.strip()
            if canonical in _MULTI_VALUED:
                self.fields.extend((canonical, item) for item in split_header_values(value))
            else:
                self.fields.append((canonical, value))
        self._validate_headers()
        self.content = self._checked_body(body)

    def _parse_start_line(self, line: str) -> None:
        parts = line.split(" ", 2)
        if parts[0] == "SIP/2.0" and len(parts) >= 2:
            self.version = "SIP/2.0"
            if not (parts[1].isdigit() and 100 <= int(parts[1]) <= 699):
                raise SipMessageError(f"bad status code in {line[:60]!r}")
            self.status_code = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
        elif len(parts) == 3 and parts[2] == "SIP/2.0" and set(parts[0]) <= TOKEN_CHARS:
            self.is_request = True
            self.version = "SIP/2.0"
            self.method = parts[0]
            self.request_uri = parts[1]
            if not parts[1] or ":" not in parts[1]:
                raise SipMessageError(f"bad Request-URI in {line[:60]!r}")
        elif (
            (words := line.split())
            and len(words) >= 3
            and set(words[0]) <= TOKEN_CHARS
            and (_VERSION.match(words[-1]))
        ):
            # A request, but not as RFC 3261 25.1 spells it (extra or trailing spaces, a
            # Request-URI with spaces, another version): answered 400 or 505 if the headers
            # let us answer at all (RFC 4475 3.1.2.8-3.1.2.10, 3.1.2.16).
            self.is_request = True
            self.version = words[-1]
            self.method = words[0]
            self.request_uri = " ".join(words[1:-1])
            self.defects.append(
                f"unsupported version {words[-1][:12]}"
                if words[-1] != "SIP/2.0"
                else "malformed Request-Line"
            )
        else:
            raise SipMessageError(f"bad start line {line[:60]!r}")
        self.heading = line.encode()

    def _validate_headers(self) -> None:
        """Check every header the agent acts on. Without a usable top Via no answer can be
        routed: the message is dropped. Anything else wrong in a request is collected in
        `defects` and answered 400; a response with a defect is dropped."""
        vias = self.values("Via")
        if not vias:
            raise SipMessageError("missing Via header")
        defects = self.defects
        try:
            self.via = [parse_via(vias[0])]
        except HeaderError as error:
            # Junk parameters or another SIP version do not stop us answering 400 or 505 to
            # a sent-by we can read.
            try:
                self.via = [parse_via(vias[0].split(";")[0], allow_other_version=True)]
            except HeaderError:
                raise SipMessageError(f"unroutable top Via: {error}") from error
            defects.append(f"Via: {error}")
        for value in vias[1:]:
            try:
                self.via.append(parse_via(value))
            except HeaderError as error:
                defects.append(str(error))
        counts: dict[str, int] = {}
        for name, _ in self.fields:
            counts[name] = counts.get(name, 0) + 1
        for name in ("From", "To", "Call-ID", "CSeq"):
            if not counts.get(name):
                defects.append(f"missing {name} header")
        for name in _SINGLE_VALUED:
            if counts.get(name, 0) > 1:
                defects.append(f"duplicated {name} header")
        for name in ("From", "To"):
            value = self.first(name)
            if value is not None:
                try:
                    setattr(self, f"{name.lower()}_addr", parse_name_addr(value))
                except HeaderError as error:
                    defects.append(f"{name}: {error}")
        for name in ("Contact", "Record-Route", "Route"):
            for value in self.values(name):
                if name == "Contact" and value == "*":
                    continue
                try:
                    parse_name_addr(value)
                except HeaderError as error:
                    defects.append(f"{name}: {error}")
        cseq = self.first("CSeq")
        if cseq is not None:
            try:
                self._cseq = parse_cseq(cseq)
            except HeaderError as error:
                defects.append(str(error))
            else:
                if self.is_request and self._cseq[1] != self.method:
                    defects.append(f"CSeq method {self._cseq[1]!r} does not match {self.method}")
        if counts.get("Call-ID") and not self.call_id:
            defects.append("empty Call-ID")
        max_forwards = self.first("Max-Forwards")
        if max_forwards is not None and not (max_forwards.isdigit() and len(max_forwards) < 10):
            defects.append(f"bad Max-Forwards {max_forwards[:20]!r}")
        if self.is_request and not defects:
            try:
                uri = check_request_uri(self.request_uri)
            except HeaderError as error:
                defects.append(f"Request-URI: {error}")
            else:
                if uri is not None and uri.headers:
                    defects.append("headers in the Request-URI")  # RFC 4475 3.1.2.11

    def _checked_body(self, body: bytes) -> bytes:
        length_text = self.first("Content-Length")
        if length_text is None:
            return body  # optional over UDP (RFC 3261 18.3): the datagram ends the body
        if not length_text.isdigit() or len(length_text) > 9:
            self.defects.append(f"bad Content-Length {length_text[:20]!r}")
            return body
        length = int(length_text)
        if length > len(body):
            # RFC 3261 18.3: a datagram shorter than its Content-Length is malformed.
            self.defects.append(f"Content-Length {length} exceeds the {len(body)} body bytes")
            return body
        return body[:length]  # RFC 3261 18.3: excess bytes of a datagram are discarded

    # -- accessors used by the endpoint ----------------------------------------------------
    def values(self, name: str) -> list[str]:
        return [value for field_name, value in self.fields if field_name == name]

    def first(self, name: str) -> str | None:
        for field_name, value in self.fields:
            if field_name == name:
                return value
        return None

    @property
    def call_id(self) -> str:
        return self.first("Call-ID") or ""

    @property
    def cseq(self) -> int:
        return self._cseq[0]

    @property
    def cseq_method(self) -> str:
        return self._cseq[1]

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.params.get("tag") if self.from_addr else None

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.params.get("tag") if self.to_addr else None

    @property
    def top_via_branch(self) -> str:
        return self.via[0].branch if self.via else ""

    @property
    def transaction_key(self) -> str:
        """Which server transaction this request belongs to (RFC 3261 17.2.3): the branch with
        the top Via's sent-by (and Call-ID, CSeq number); without the RFC 3261 magic cookie
        (an RFC 2543 peer), the Request-URI, From tag, Call-ID, CSeq number and top Via. An
        ACK for an error response gets the key of its INVITE."""
        if not self.via:
            return ""
        top = self.via[0]
        sent_by = f"{top.host}:{top.port or 5060}"
        if top.branch.startswith("z9hG4bK"):
            # Call-ID and CSeq too: peers (and test corpora) that reuse a branch for a new
            # request must not have it taken for a retransmission.
            return f"{top.branch}|{sent_by}|{self.call_id}|{self.cseq}"
        return f"2543|{self.request_uri}|{self.from_tag}|{self.call_id}|{self.cseq}|{sent_by}"

    @property
    def seen_from(self) -> tuple[str, str]:
        """On a response to our request: our address as the far end saw it (RFC 3581), the
        top Via's received= host and rport= port, each "" when absent (NAT diagnostics)."""
        params = self.via[0].params if self.via else {}
        return params.get("received") or "", params.get("rport") or ""

    @property
    def response_destination(self) -> tuple[str, int]:
        """Where a response to this request goes (RFC 3261 18.2.2 with RFC 3581): the packet's
        source address, at the rport or sent-by port. Without a source (a message not read
        from a socket): the top Via's received= or sent-by host, an IPv6 one without its
        brackets (pyVoIP D12: `[2001:db8::1]:5070` was read as host `[2001`). The port was
        checked at parse time (1-65535)."""
        top_via = self.via[0]
        port = top_via.port or 5060
        if self.source is None:
            host = top_via.params.get("received") or top_via.host
            return host.strip("[]"), port
        source_ip, source_port = self.source
        return source_ip, source_port if "rport" in top_via.params else port

    @property
    def contact_uri(self) -> str | None:
        contact = self.first("Contact")
        return name_addr_uri(contact) if contact and contact != "*" else None


@dataclass(slots=True)
class OutgoingRequest:
    data: bytes
    method: str
    branch: str
    call_id: str
    cseq: int
