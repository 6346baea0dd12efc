"""Every SIP message the agent sends, built as bytes (RFC 3261 8.1.1, 8.2.6, 12, 17.1.1.3).

Our own factory (pyVoIP's `SIPClient` builders had D1-D6, D10, D11; see `pyvoip_compat`).
It keeps no per-call state: tags live in each call's `DialogState` (pyVoIP D13).
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import Sequence

from sipagent import __version__
from sipagent.sip.dialog import DialogState
from sipagent.sip.digest import DigestChallenge, DigestCredentials
from sipagent.sip.message import OutgoingRequest, SipMessage
from sipagent.sip.pyvoip_compat import new_branch, new_instance_id, reason_phrase
from sipagent.sip.uri import header_params, name_addr_uri

USER_AGENT = f"sipagent/{__version__} (pyVoIP)"
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "NOTIFY")


class MessageFactory:
    """Requests and responses for one local SIP identity (user, advertised address, port)."""

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
            # pyVoIP D3: it would advertise 0.0.0.0 in Contact and SDP.
            raise ValueError("advertised address must be a routable IP, not 0.0.0.0")
        self.user = user
        self.advertised_ip = advertised_ip
        self.sip_port = sip_port
        self.server_host, self.server_port = server if server else ("", 0)
        self.domain = domain or self.server_host or advertised_ip
        self.credentials = DigestCredentials(auth_user or user, password)
        self.instance_id = new_instance_id()
        self.register_call_id = self.new_call_id()
        self._register_tag = self.new_tag()
        self._register_cseq = itertools.count(1)

    # -- identifiers ------------------------------------------------------------------------
    def new_call_id(self) -> str:
        """Globally unique (pyVoIP D10: its Call-IDs repeat across restarts)."""
        return f"{uuid.uuid4().hex}@{self.advertised_ip}"

    @staticmethod
    def new_tag() -> str:
        return secrets.token_hex(6)

    @staticmethod
    def new_branch() -> str:
        return new_branch()

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.advertised_ip}:{self.sip_port}>"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP {self.advertised_ip}:{self.sip_port};branch={branch};rport\r\n"

    def _request_head(
        self,
        method: str,
        uri: str,
        branch: str,
        from_: str,
        to: str,
        call_id: str,
        cseq: int,
        routes: Sequence[str] = (),
    ) -> str:
        """Request-Line and the headers every request carries (RFC 3261 8.1.1), those a proxy
        reads first (Via, Max-Forwards, Route) at the top (7.3.1)."""
        return (
            f"{method} {uri} SIP/2.0\r\n"
            + self._via(branch)
            + "Max-Forwards: 70\r\n"
            + "".join(f"Route: {route}\r\n" for route in routes)
            + f"From: {from_}\r\n"
            + f"To: {to}\r\n"
            + f"Call-ID: {call_id}\r\n"
            + f"CSeq: {cseq} {method}\r\n"
        )

    def _authorization(self, challenge: DigestChallenge, method: str, uri: str) -> str:
        # pyVoIP D4: qop=auth with cnonce/nc, 407 (Proxy-Authorization), uri = Request-URI.
        value = self.credentials.authorization(challenge, method, uri)
        return f"{challenge.reply_header}: {value}\r\n"

    # -- out of dialog requests -------------------------------------------------------------
    def register_request(
        self, expires: int, authorization: tuple[DigestChallenge, ...] = (), *, query: bool = False
    ) -> OutgoingRequest:
        """REGISTER for our AOR; same Call-ID for the whole registration (RFC 3261 10.2.4).
        `query`: no Contact, so the registrar lists the AOR's bindings and changes none
        (RFC 3261 10.2.3)."""
        # The registrar's port belongs in the Request-URI only when the domain is its host.
        uri = f"sip:{self.domain}"
        if self.domain == self.server_host and self.server_port not in (0, 5060):
            uri += f":{self.server_port}"
        branch = self.new_branch()
        cseq = next(self._register_cseq)
        from_ = f"<{self.aor}>;tag={self._register_tag}"
        message = (
            self._request_head(
                "REGISTER", uri, branch, from_, f"<{self.aor}>", self.register_call_id, cseq
            )
            + (
                ""
                if query
                else f'Contact: {self.contact};+sip.instance="<urn:uuid:{self.instance_id}>"\r\n'
                + f"Expires: {expires}\r\n"
            )
            + "".join(self._authorization(c, "REGISTER", uri) for c in authorization)
            + f"Allow: {', '.join(ALLOWED_METHODS)}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Length: 0\r\n\r\n"
        )
        return OutgoingRequest(message.encode(), "REGISTER", branch, self.register_call_id, cseq)

    def options_request(self, target_uri: str) -> OutgoingRequest:
        """Out-of-dialog OPTIONS: the registration's binding probe, `doctor`'s registrar check."""
        branch = self.new_branch()
        call_id = self.new_call_id()
        from_ = f"<{self.aor}>;tag={self.new_tag()}"
        message = (
            self._request_head("OPTIONS", target_uri, branch, from_, f"<{target_uri}>", call_id, 1)
            + f"Contact: {self.contact}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Length: 0\r\n\r\n"
        )
        return OutgoingRequest(message.encode(), "OPTIONS", branch, call_id, 1)

    def invite_request(
        self,
        target_uri: str,
        sdp_offer: str,
        *,
        call_id: str,
        from_tag: str,
        cseq: int,
        authorization: tuple[DigestChallenge, ...] = (),
    ) -> OutgoingRequest:
        """An initial INVITE to any URI, offering exactly what we speak."""
        branch = self.new_branch()
        body = sdp_offer.encode()
        from_, to = f"<{self.aor}>;tag={from_tag}", f"<{target_uri}>"
        message = (
            self._request_head("INVITE", target_uri, branch, from_, to, call_id, cseq)
            + f"Contact: {self.contact}\r\n"
            + "".join(self._authorization(c, "INVITE", target_uri) for c in authorization)
            + f"Allow: {', '.join(ALLOWED_METHODS)}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + "Content-Type: application/sdp\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        return OutgoingRequest(message.encode() + body, "INVITE", branch, call_id, cseq)

    def ack_for_failure(
        self, invite: OutgoingRequest, response: SipMessage, target_uri: str
    ) -> bytes:
        """ACK for a non-2xx final: part of the INVITE transaction (same branch, RFC 17.1.1.3)."""
        from_, to = response.first("From") or "", response.first("To") or ""
        head = self._request_head(
            "ACK", target_uri, invite.branch, from_, to, invite.call_id, invite.cseq
        )
        return (head + "Content-Length: 0\r\n\r\n").encode()

    # -- responses --------------------------------------------------------------------------
    @staticmethod
    def _response_vias(request: SipMessage) -> str:
        """pyVoIP D2: the top Via gets received/rport, so the response follows the request."""
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

    def response(
        self,
        request: SipMessage,
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
            reason = reason_phrase(status_code)
        to_value = request.first("To") or ""
        if to_tag and not request.to_tag:
            to_value += f";tag={to_tag}"
        lines = [f"SIP/2.0 {status_code} {reason}\r\n", self._response_vias(request)]
        # pyVoIP D6: Record-Route is copied into responses that establish the dialog.
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

    def ringing(self, request: SipMessage, dialog: DialogState) -> bytes:
        return self.response(request, 180, "Ringing", to_tag=dialog.local_tag, with_contact=True)

    def answer(self, request: SipMessage, dialog: DialogState, sdp_answer: str) -> bytes:
        """200 OK with our SDP (pyVoIP D7: built by sipagent.sip.sdp with a single codec)."""
        return self.response(
            request,
            200,
            "OK",
            to_tag=dialog.local_tag,
            extra_headers=f"Allow: {', '.join(ALLOWED_METHODS)}\r\nSupported: replaces\r\n",
            body=sdp_answer,
            with_contact=True,
        )

    # -- dialogs ----------------------------------------------------------------------------
    def new_uas_dialog(self, invite: SipMessage) -> DialogState:
        """The dialog our answer to `invite` creates (RFC 3261 12.1.1), with a new To-tag."""
        return DialogState(
            call_id=invite.call_id,
            local_tag=self.new_tag(),
            remote_tag=invite.from_tag or "",
            local_party=invite.first("To") or "",
            remote_party=invite.first("From") or "",
            remote_target=invite.contact_uri or name_addr_uri(invite.first("From") or ""),
            route_set=invite.values("Record-Route"),  # D6: UAS keeps the received order
        )

    def new_uac_dialog(self, response: SipMessage, from_tag: str) -> DialogState:
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

    def ack_for_answer(self, dialog: DialogState, cseq: int) -> OutgoingRequest:
        """ACK for a 2xx: its own transaction, along the route set, with the INVITE's CSeq."""
        return self.in_dialog_request(dialog, "ACK", cseq=cseq)

    def bye(self, dialog: DialogState) -> OutgoingRequest:
        """pyVoIP D1: our BYE carries our own Via; D6: it follows the route set."""
        return self.in_dialog_request(dialog, "BYE")

    def in_dialog_request(
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
        branch = self.new_branch()
        encoded_body = body.encode()
        from_ = f"{dialog.local_party};tag={dialog.local_tag}"
        head = self._request_head(
            method, dialog.remote_target, branch, from_, dialog.remote_party, dialog.call_id,
            cseq, routes=dialog.route_set,
        )  # fmt: skip
        message = (
            head
            + f"Contact: {self.contact}\r\n"
            + f"User-Agent: {USER_AGENT}\r\n"
            + extra_headers
            + f"Content-Length: {len(encoded_body)}\r\n\r\n"
        )
        return OutgoingRequest(
            message.encode() + encoded_body, method, branch, dialog.call_id, cseq
        )
