"""The one place where pyVoIP 1.6.8 is adapted: its parser and message factory, defects fixed.

pyVoIP gives us the SIP message model (`SIPMessage`: Via/From/To/CSeq parsing, `SIPStatus`
reason phrases) and the client's tag/branch/counter machinery (`SIPClient`). Its transport
(a receive thread, `time.sleep` pacing) and its RTP audio path are not used: the asyncio
endpoint in `sipagent.sip.endpoint` and `sipagent.media` replace them.

Defects worked around here, each named where it is fixed and pinned by a test in
tests/unit/test_sip_adapter.py (D1..D11):
  D1  BYE copies the INVITE's Via headers instead of its own Via, so its 200 OK goes astray.
  D2  Every response is sent to the configured server, never to the Via/source
      (RFC 3261 18.2.2, RFC 3581 rport): a direct INVITE gets no answer.
  D3  Default myIP="0.0.0.0" ends up in Contact and SDP c=: the peer sends RTP nowhere.
  D4  Digest is MD5 without qop/cnonce/nc; 407 Proxy-Authenticate is not handled; the digest
      uri is "sip:SERVER;transport=UDP" instead of the Request-URI.
  D5  No 100 Trying, ~1 s sleep between 180 and 200, 200 never retransmitted (fixed by the
      endpoint's transaction handling; the factory here only builds the messages).
  D6  Record-Route is not copied into responses nor used as the dialog's route set.
  D7  The SDP answer lists every compatible payload type of the offer (we answer one codec).
  D8  Only INVITE/ACK/BYE/CANCEL parse at all: OPTIONS, REGISTER responses aside, raise.
  D9  The parser keeps only the first of repeated headers (Record-Route, Route), ignores
      compact forms and header-name case, splits the body at every blank line, and does not
      validate Content-Length or the CSeq method.
  D10 Call-IDs are sha256 of a counter starting at 1: identical across process restarts.
  D11 A new To-tag is generated for every response (gen_ok), breaking the dialog.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from dataclasses import dataclass, field

import pyVoIP.VoIP  # noqa: F401  # pyVoIP.SIP alone is a circular import; VoIP loads it first
from pyVoIP.SIP import SIPClient, SIPMessage, SIPMessageType, SIPParseError, SIPStatus

from sipagent import __version__
from sipagent.sip.digest import DigestChallenge, DigestCredentials
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
from sipagent.sip.uri import header_params, name_addr_uri, split_header_values

USER_AGENT = f"sipagent/{__version__} (pyVoIP)"
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "NOTIFY")
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


class SipMessageError(SIPParseError):
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


class AgentSIPMessage(SIPMessage):
    """pyVoIP's SIPMessage with a strict, complete RFC 3261 parser in front (D8, D9).

    pyVoIP's own header parsing (Via dicts, From/To dicts, CSeq dict) still fills `headers`
    for single-valued headers, so code written against pyVoIP's model keeps working.
    """

    def __init__(self, data: bytes, source: tuple[str, int] | None = None) -> None:
        self.source = source
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
            super().__init__(data)
        except SipMessageError:
            raise
        except (SIPParseError, ValueError, IndexError, KeyError, UnicodeDecodeError) as error:
            raise SipMessageError(f"unparseable header value: {error}") from error

    # D9: pyVoIP splits at every CRLFCRLF and keeps the first header of each name.
    def parse(self, data: bytes) -> None:
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
        self._fill_pyvoip_headers()

    def _parse_start_line(self, line: str) -> None:
        parts = line.split(" ", 2)
        if parts[0] == "SIP/2.0" and len(parts) >= 2:
            self.type = SIPMessageType.RESPONSE
            self.version = "SIP/2.0"
            if not (parts[1].isdigit() and 100 <= int(parts[1]) <= 699):
                raise SipMessageError(f"bad status code in {line[:60]!r}")
            self.status_code = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            # pyVoIP's enum lacks many codes; status_code is authoritative.
            with contextlib.suppress(ValueError):
                self.status = SIPStatus(self.status_code)
        elif len(parts) == 3 and parts[2] == "SIP/2.0" and set(parts[0]) <= TOKEN_CHARS:
            self.type = SIPMessageType.MESSAGE
            self.version = "SIP/2.0"
            self.method = parts[0]
            self.request_uri = parts[1]
            if not parts[1] or ":" not in parts[1]:
                raise SipMessageError(f"bad Request-URI in {line[:60]!r}")
        elif (words := line.split()) and len(words) >= 3 and set(words[0]) <= TOKEN_CHARS and (
            _VERSION.match(words[-1])
        ):
            # A request, but not as RFC 3261 25.1 spells it (extra or trailing spaces, a
            # Request-URI with spaces, another version): answered 400 or 505 if the headers
            # let us answer at all (RFC 4475 3.1.2.8-3.1.2.10, 3.1.2.16).
            self.type = SIPMessageType.MESSAGE
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

    def _fill_pyvoip_headers(self) -> None:
        # pyVoIP's model, for pyVoIP-shaped code (its stock methods in the defect tests). Its
        # parse_header chokes on tel:/sips: URIs and mangles display names, so the agent reads
        # `via`, `from_addr`, `to_addr` instead, and a value pyVoIP cannot parse stays raw.
        self.headers = {name: value for name, value in reversed(self.fields)}
        self.headers["Via"] = []
        with contextlib.suppress(SIPParseError, ValueError, IndexError, KeyError):
            self.parse_header("Via", self.values("Via"))
        for name in ("From", "To", "CSeq"):
            with contextlib.suppress(SIPParseError, ValueError, IndexError, KeyError):
                self.parse_header(name, self.first(name) or "")
        if self.content:
            self.body = {"raw": self.content}

    # -- accessors used by the endpoint ----------------------------------------------------
    @property
    def is_request(self) -> bool:
        return self.type == SIPMessageType.MESSAGE

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


@dataclass(slots=True)
class DialogState:
    """What a UAS dialog needs to send in-dialog requests (RFC 3261 12.1.1)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str  # To header value of the INVITE, without tag
    remote_party: str  # From header value of the INVITE, with its tag
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0

    @property
    def next_hop_uri(self) -> str:
        """Loose routing (RFC 3261 16.12): first Route if any, else the remote target."""
        return name_addr_uri(self.route_set[0]) if self.route_set else self.remote_target


class AgentSIPClient(SIPClient):
    """pyVoIP's SIPClient used as a message factory for an asyncio endpoint.

    It is never `start()`ed: pyVoIP's receive thread and blocking socket are replaced by
    `sipagent.sip.endpoint.SipEndpoint`.
    """

    def __init__(
        self,
        *,
        user: str,
        password: str,
        auth_user: str,
        domain: str,
        server: tuple[str, int] | None,
        advertised_ip: str,
        sip_port: int,
    ) -> None:
        if advertised_ip in ("0.0.0.0", "::", ""):
            # D3: pyVoIP would advertise 0.0.0.0 in Contact and SDP.
            raise ValueError("advertised address must be a routable IP, not 0.0.0.0")
        server_host, server_port = server if server else ("", 0)
        super().__init__(
            server_host, server_port, user, password, phone=None,  # type: ignore[arg-type]
            myIP=advertised_ip, myPort=sip_port,
        )  # fmt: skip
        self.domain = domain or server_host or advertised_ip
        self.credentials = DigestCredentials(auth_user or user, password)
        self.register_call_id = self.gen_call_id()

    # D10: globally unique Call-IDs.
    def gen_call_id(self) -> str:
        return f"{uuid.uuid4().hex}@{self.myIP}"

    def gen_tag(self) -> str:
        return secrets.token_hex(6)

    @property
    def contact(self) -> str:
        return f"<sip:{self.username}@{self.myIP}:{self.myPort}>"

    @property
    def aor(self) -> str:
        return f"sip:{self.username}@{self.domain}"

    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP {self.myIP}:{self.myPort};branch={branch};rport\r\n"

    # D4: qop=auth with cnonce/nc, 407 (Proxy-Authorization), digest uri = Request-URI.
    def gen_authorization(  # type: ignore[override]
        self, challenge: DigestChallenge, method: str, uri: str
    ) -> str:
        value = self.credentials.authorization(challenge, method, uri)
        return f"{challenge.reply_header}: {value}\r\n"

    def gen_register_request(
        self, expires: int, authorization: tuple[DigestChallenge, ...] = (), *, query: bool = False
    ) -> OutgoingRequest:
        """REGISTER for our AOR; same Call-ID for the whole registration (RFC 3261 10.2.4).
        `query`: no Contact, so the registrar lists the AOR's bindings and changes none
        (RFC 3261 10.2.3)."""
        # The registrar's port belongs in the Request-URI only when the domain is its host.
        uri = f"sip:{self.domain}"
        if self.domain == self.server and self.port not in (0, 5060):
            uri += f":{self.port}"
        branch = self.gen_branch()
        cseq = self.registerCounter.next()
        message = (
            f"REGISTER {uri} SIP/2.0\r\n"
            + self._via(branch)
            + "Max-Forwards: 70\r\n"
            + f"From: <{self.aor}>;tag={self.tagLibrary['register']}\r\n"
            + f"To: <{self.aor}>\r\n"
            + f"Call-ID: {self.register_call_id}\r\n"
            + f"CSeq: {cseq} REGISTER\r\n"
            + (
                ""
                if query
                else f'Contact: {self.contact};+sip.instance="<urn:uuid:{self.urnUUID}>"\r\n'
                + f"Expires: {expires}\r\n"
            )
            + "".join(self.gen_authorization(c, "REGISTER", uri) for c in authorization)
            + f"Allow: {', '.join(ALLOWED_METHODS)}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Length: 0\r\n\r\n"
        )
        return OutgoingRequest(message.encode(), "REGISTER", branch, self.register_call_id, cseq)

    def gen_options_request(self, target_uri: str) -> OutgoingRequest:
        """Out-of-dialog OPTIONS, used to probe that our registration binding still exists."""
        branch = self.gen_branch()
        call_id = self.gen_call_id()
        message = (
            f"OPTIONS {target_uri} SIP/2.0\r\n"
            + self._via(branch)
            + "Max-Forwards: 70\r\n"
            + f"From: <{self.aor}>;tag={self.gen_tag()}\r\n"
            + f"To: <{target_uri}>\r\n"
            + f"Call-ID: {call_id}\r\n"
            + "CSeq: 1 OPTIONS\r\n"
            + f"Contact: {self.contact}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Length: 0\r\n\r\n"
        )
        return OutgoingRequest(message.encode(), "OPTIONS", branch, call_id, 1)

    # D2: the top Via gets received/rport so the response follows the request's path.
    def _gen_response_via_header(self, request: SIPMessage) -> str:
        assert isinstance(request, AgentSIPMessage)
        vias = request.values("Via")
        if request.source is not None and vias:
            source_ip, source_port = request.source
            top = vias[0]
            params = header_params(top)
            if "received" not in params:
                top += f";received={source_ip}"
            if "rport" in params and not params["rport"]:
                top = top.replace(";rport", f";rport={source_port}", 1)
            vias = [top, *vias[1:]]
        return "".join(f"Via: {via}\r\n" for via in vias)

    @staticmethod
    def response_destination(request: AgentSIPMessage) -> tuple[str, int]:
        """RFC 3261 18.2.2 with RFC 3581: reply to the source address, rport or sent-by port.
        The port was checked at parse time (1-65535); the host is the packet's source."""
        top_via = request.via[0]
        port = top_via.port or 5060
        if request.source is None:
            return top_via.params.get("received") or top_via.host, port
        source_ip, source_port = request.source
        return source_ip, source_port if "rport" in top_via.params else port

    def gen_response(
        self,
        request: AgentSIPMessage,
        status_code: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        extra_headers: str = "",
        body: str = "",
        with_contact: bool = False,
    ) -> bytes:
        """Any response; Via/From/Call-ID/CSeq copied verbatim, To-tag added once (D11)."""
        if reason is None:
            try:
                reason = SIPStatus(status_code).phrase
            except ValueError:
                reason = "Unknown"
        to_value = request.first("To") or ""
        if to_tag and not request.to_tag:
            to_value += f";tag={to_tag}"
        lines = [f"SIP/2.0 {status_code} {reason}\r\n", self._gen_response_via_header(request)]
        # D6: Record-Route is copied into responses that establish the dialog.
        if request.method == "INVITE" and 100 < status_code < 300:
            lines += [f"Record-Route: {route}\r\n" for route in request.values("Record-Route")]
        # Copied as received; a 400 for a request missing one of them simply omits it.
        copied = {
            "From": request.first("From"),
            "To": to_value if request.first("To") is not None else None,
            "Call-ID": request.first("Call-ID"),
            "CSeq": request.first("CSeq"),
        }
        lines += [f"{name}: {value}\r\n" for name, value in copied.items() if value is not None]
        if with_contact:
            lines.append(f"Contact: {self.contact}\r\n")
        lines.append(f"User-Agent: {USER_AGENT}\r\n")
        lines.append(extra_headers)
        if body:
            lines.append("Content-Type: application/sdp\r\n")
        encoded_body = body.encode()
        lines.append(f"Content-Length: {len(encoded_body)}\r\n\r\n")
        return "".join(lines).encode() + encoded_body

    def gen_ringing(self, request: SIPMessage) -> bytes:  # type: ignore[override]
        assert isinstance(request, AgentSIPMessage)
        return self.gen_response(
            request, 180, "Ringing", to_tag=self.tagLibrary[request.call_id], with_contact=True
        )

    def gen_ok(self, request: SIPMessage) -> bytes:  # type: ignore[override]
        assert isinstance(request, AgentSIPMessage)
        return self.gen_response(request, 200, "OK", to_tag=self.tagLibrary.get(request.call_id))

    def gen_answer(  # type: ignore[override]
        self, request: AgentSIPMessage, sdp_answer: str
    ) -> bytes:
        """200 OK with our SDP (D7: built by sipagent.sip.sdp with a single codec)."""
        return self.gen_response(
            request,
            200,
            "OK",
            to_tag=self.tagLibrary[request.call_id],
            extra_headers=f"Allow: {', '.join(ALLOWED_METHODS)}\r\nSupported: replaces\r\n",
            body=sdp_answer,
            with_contact=True,
        )

    def new_dialog(self, invite: AgentSIPMessage) -> DialogState:
        local_tag = self.gen_tag()
        self.tagLibrary[invite.call_id] = local_tag
        return DialogState(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_tag or "",
            local_party=invite.first("To") or "",
            remote_party=invite.first("From") or "",
            remote_target=invite.contact_uri or name_addr_uri(invite.first("From") or ""),
            route_set=invite.values("Record-Route"),  # D6: UAS keeps the received order
        )

    # pyVoIP's gen_invite hard-codes the server as target, 0.0.0.0-prone addresses and an
    # SDP listing every codec; ours targets any URI and offers exactly what we speak.
    def gen_invite_request(  # type: ignore[override]
        self,
        target_uri: str,
        sdp_offer: str,
        *,
        call_id: str,
        from_tag: str,
        cseq: int,
        authorization: tuple[DigestChallenge, ...] = (),
    ) -> OutgoingRequest:
        branch = self.gen_branch()
        body = sdp_offer.encode()
        message = (
            f"INVITE {target_uri} SIP/2.0\r\n"
            + self._via(branch)
            + "Max-Forwards: 70\r\n"
            + f"From: <{self.aor}>;tag={from_tag}\r\n"
            + f"To: <{target_uri}>\r\n"
            + f"Call-ID: {call_id}\r\n"
            + f"CSeq: {cseq} INVITE\r\n"
            + f"Contact: {self.contact}\r\n"
            + "".join(self.gen_authorization(c, "INVITE", target_uri) for c in authorization)
            + f"Allow: {', '.join(ALLOWED_METHODS)}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Type: application/sdp\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        return OutgoingRequest(message.encode() + body, "INVITE", branch, call_id, cseq)

    def gen_ack_for_failure(
        self, invite: OutgoingRequest, response: AgentSIPMessage, target_uri: str
    ) -> bytes:
        """ACK for a non-2xx final: part of the INVITE transaction (same branch, RFC 17.1.1.3)."""
        return (
            f"ACK {target_uri} SIP/2.0\r\n"
            + self._via(invite.branch)
            + "Max-Forwards: 70\r\n"
            + f"From: {response.first('From')}\r\n"
            + f"To: {response.first('To')}\r\n"
            + f"Call-ID: {invite.call_id}\r\n"
            + f"CSeq: {invite.cseq} ACK\r\n"
            + "Content-Length: 0\r\n\r\n"
        ).encode()

    def new_uac_dialog(self, response: AgentSIPMessage, from_tag: str) -> DialogState:
        """The dialog a 2xx to our INVITE creates (RFC 3261 12.1.2: route set reversed)."""
        to_value = response.first("To") or ""
        return DialogState(
            call_id=response.call_id,
            local_tag=from_tag,
            remote_tag=response.to_tag or "",
            local_party=f"<{self.aor}>",
            remote_party=to_value,
            remote_target=response.contact_uri or name_addr_uri(to_value),
            route_set=list(reversed(response.values("Record-Route"))),
            local_cseq=response.cseq,
        )

    def gen_ack_for_answer(self, dialog: DialogState, cseq: int) -> OutgoingRequest:
        """ACK for a 2xx: its own transaction, along the route set, with the INVITE's CSeq."""
        return self.gen_in_dialog_request(dialog, "ACK", cseq=cseq)

    # D1: our BYE carries our own Via; D6: it follows the route set.
    def gen_bye(self, dialog: DialogState) -> OutgoingRequest:  # type: ignore[override]
        return self.gen_in_dialog_request(dialog, "BYE")

    def gen_in_dialog_request(
        self,
        dialog: DialogState,
        method: str,
        extra_headers: str = "",
        body: str = "",
        cseq: int | None = None,
    ) -> OutgoingRequest:
        if cseq is None:
            dialog.local_cseq += 1
            cseq = dialog.local_cseq
        branch = self.gen_branch()
        encoded_body = body.encode()
        message = (
            f"{method} {dialog.remote_target} SIP/2.0\r\n"
            + self._via(branch)
            + "Max-Forwards: 70\r\n"
            + "".join(f"Route: {route}\r\n" for route in dialog.route_set)
            + f"From: {dialog.local_party};tag={dialog.local_tag}\r\n"
            + f"To: {dialog.remote_party}\r\n"
            + f"Call-ID: {dialog.call_id}\r\n"
            + f"CSeq: {cseq} {method}\r\n"
            + f"Contact: {self.contact}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + extra_headers
            + f"Content-Length: {len(encoded_body)}\r\n\r\n"
        )
        return OutgoingRequest(
            message.encode() + encoded_body, method, branch, dialog.call_id, cseq
        )
