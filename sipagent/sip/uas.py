"""The user agent server (RFC 3261 8.2, 13.3, 15): requests we receive, calls we answer.

Every request that is not a retransmission comes here (the transaction layer answered
those). Requests this UA cannot process get their RFC 3261 8.2 answer (400, 415, 416, 420,
505, ...); an INVITE is admitted or refused, negotiated, rung and answered; ACK, BYE,
CANCEL, re-INVITE, INFO and NOTIFY act on the dialog they belong to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from typing import Any

from sipagent.config import AgentSettings
from sipagent.media.clock import MediaClock
from sipagent.media.ports import RtpPortAllocator
from sipagent.media.source import validate_remote
from sipagent.observability.events import CallAnswered
from sipagent.sip.admission import AdmissionLimits, InviteAdmission, OverloadGuard
from sipagent.sip.call import Call, CallState
from sipagent.sip.factory import ALLOWED_METHODS, MessageFactory
from sipagent.sip.lifecycle import CallLifecycle, Spawn
from sipagent.sip.message import SipMessage
from sipagent.sip.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    NotAcceptableHere,
    SdpError,
    UnusableAddress,
    build_answer,
    negotiate,
    parse_audio_offer,
    sdp_from_body,
)
from sipagent.sip.transaction_layer import TransactionLayer
from sipagent.sip.uri import UriError, parse_uri

log = logging.getLogger("sipagent.sip")

NOT_ALLOWED = {"REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "PRACK", "UPDATE"}
DTMF_SIGNALS = set("0123456789*#ABCD")
REQUEST_URI_SCHEMES = ("sip", "sips", "tel")  # others: 416 (RFC 3261 8.2.2.1)
SUPPORTED_OPTION_TAGS: frozenset[str] = frozenset()  # a Require naming others: 420 (8.2.2.3)
# Bodies we read, per method; another Content-Type gets 415 with Accept (RFC 3261 8.2.3).
BODY_TYPES = {
    "INVITE": ("application/sdp", "multipart/mixed"),
    "ACK": ("application/sdp", "multipart/mixed"),
    "INFO": ("application/dtmf-relay", "application/dtmf"),
    "NOTIFY": ("message/sipfrag",),
}
Transfer = Callable[[Call, str], Awaitable[bool]]


def _usable(media: NegotiatedMedia) -> NegotiatedMedia:
    """The media address must be one an IPv4 RTP socket can send to (not multicast, not
    port 0), or be the 0.0.0.0 of an RFC 2543 hold: else 488, before anything is answered."""
    if media.remote_address != "0.0.0.0":
        try:
            validate_remote((media.remote_address, media.remote_port), socket.AF_INET)
        except ValueError as error:
            raise UnusableAddress(str(error)) from error
    return media


def _caller_name(request: SipMessage) -> str:
    """The caller's number or user (sip:user@host, tel:+1555...), for logs and records."""
    uri = request.from_addr.uri if request.from_addr else ""
    scheme, _, rest = uri.partition(":")
    if scheme.lower() == "tel":
        return rest.split(";")[0] or "unknown"
    user, at, host = rest.partition("@")
    return (user if at else "") or host.split(";")[0] or "unknown"


def _warning(text: str) -> str:
    """A Warning header (RFC 3261 20.43) whose text cannot break the message."""
    safe = "".join(char for char in text if 32 <= ord(char) < 127 and char not in '"\\')
    return f'Warning: 399 sipagent "{safe[:120]}"\r\n'


def _option_values(request: SipMessage, name: str) -> list[str]:
    return [
        item.strip() for value in request.values(name) for item in value.split(",") if item.strip()
    ]


def _accepts_sdp(accept: list[str]) -> bool:
    """An INVITE's Accept (if any) must allow the SDP of our answer (RFC 3261 8.2.3)."""
    if not accept:
        return True
    types = {item.split(";")[0].strip().lower() for item in accept}
    return bool(types & {"application/sdp", "application/*", "*/*"})


class UserAgentServer:
    """Answers requests and inbound calls; the calls it confirms run in `lifecycle`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        calls: dict[str, Call],
        messages: MessageFactory,
        transactions: TransactionLayer,
        rtp_ports: RtpPortAllocator,
        lifecycle: CallLifecycle,
        transfer: Transfer,
        spawn: Spawn,
        dropped: Counter[str],
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.messages = messages
        self.transactions = transactions
        self.rtp_ports = rtp_ports
        self.lifecycle = lifecycle
        self.transfer = transfer
        self.spawn = spawn
        self.dropped = dropped
        self.admission = InviteAdmission(
            AdmissionLimits(
                max_calls=settings.max_calls,
                max_unconfirmed_per_source=settings.max_unconfirmed_per_source,
                invites_per_second=settings.invites_per_second,
                invite_burst=max(1, int(settings.invites_per_second * 2)),
            )
        )
        # Fed by the media clock (`watch_load`): late frames for the calls we have mean no
        # room for another one.
        self.overload = (
            OverloadGuard(late_after=settings.overload_late_ms / 1000)
            if settings.overload_late_ms > 0
            else None
        )

    def watch_load(self) -> Callable[[], None]:
        """Start feeding the overload guard from this loop's media clock; returns the stop."""
        guard = self.overload
        if guard is None:
            return lambda: None
        return MediaClock.observe_lateness(asyncio.get_running_loop(), guard.observe)

    def _respond(self, request: SipMessage, status_code: int, **kwargs: Any) -> bytes:
        response = self.messages.response(request, status_code, **kwargs)
        self.transactions.respond(request, response, status_code)
        return response

    def _refused(self, request: SipMessage) -> bool:
        """Answer what this UA cannot process as RFC 3261 8.2 says; True if answered (or an
        unusable ACK dropped)."""
        method = request.method
        if method == "ACK":
            return bool(request.defects)  # an ACK is never answered
        status: tuple[int, str, str] | None = None
        scheme = request.request_uri.partition(":")[0].lower()
        required = [tag for tag in _option_values(request, "Require")
                    if tag.lower() not in SUPPORTED_OPTION_TAGS]  # fmt: skip
        content_type = (request.first("Content-Type") or "").split(";")[0].strip().lower()
        body_types = BODY_TYPES.get(method)
        if request.version != "SIP/2.0":
            status = (505, "Version Not Supported", "")
        elif request.defects:
            log.info("400 to %s from %s:%d: %s", method, *request.source or ("?", 0),
                     request.defects[0])  # fmt: skip
            status = (400, "Bad Request", _warning(request.defects[0]))
        elif scheme not in REQUEST_URI_SCHEMES:
            status = (416, "Unsupported URI Scheme", "")
        elif required and method != "CANCEL":
            status = (420, "Bad Extension", f"Unsupported: {', '.join(required)}\r\n")
        elif request.content and body_types is not None and content_type not in body_types:
            status = (415, "Unsupported Media Type", f"Accept: {', '.join(body_types)}\r\n")
        elif request.content and (request.first("Content-Encoding") or "identity").lower() != (
            "identity"
        ):
            status = (415, "Unsupported Media Type", "Accept-Encoding: identity\r\n")
        elif method == "INVITE" and not _accepts_sdp(_option_values(request, "Accept")):
            status = (406, "Not Acceptable", "")
        if status is None:
            return False
        code, reason, extra = status
        self.dropped[f"answered {code}"] += 1
        if method == "INVITE" and not request.to_tag:
            self._reject_invite(request, code, reason, extra_headers=extra)
        else:
            self._respond(request, code, reason=reason, extra_headers=extra)
        return True

    def handle_request(self, request: SipMessage) -> None:
        """A request that is not a retransmission (the transaction layer took those)."""
        if self._refused(request):
            return
        method = request.method
        if method == "INVITE":
            if request.to_tag:
                self._handle_reinvite(request)
            else:
                self._handle_invite(request)
        elif method == "ACK":
            self._handle_ack(request)
        elif method == "BYE":
            self._handle_bye(request)
        elif method == "CANCEL":
            self._handle_cancel(request)
        elif method == "OPTIONS":
            self._respond(
                request,
                200,
                extra_headers=(
                    f"Allow: {', '.join(ALLOWED_METHODS)}\r\n"
                    "Accept: application/sdp\r\nSupported: replaces\r\n"
                ),
            )
        elif method == "INFO":
            self._handle_info(request)
        elif method == "NOTIFY":
            self._handle_notify(request)
        elif method in NOT_ALLOWED:
            self._respond(request, 405, extra_headers=f"Allow: {', '.join(ALLOWED_METHODS)}\r\n")
        else:
            self._respond(request, 501, extra_headers=f"Allow: {', '.join(ALLOWED_METHODS)}\r\n")

    def _find_dialog_call(self, request: SipMessage) -> Call | None:
        call = self.calls.get(request.call_id)
        if call is None:
            return None
        if request.to_tag and request.to_tag != call.dialog.local_tag:
            return None
        return call

    def _handle_invite(self, request: SipMessage) -> None:
        if request.call_id in self.calls:
            # Retransmissions were answered by the transaction layer (RFC 3261 17.2.1); another
            # INVITE for a call we have, without its To-tag, is ignored.
            return
        received_at = time.perf_counter()
        if not self._source_allowed(request):
            log.warning("INVITE %s from %s refused: not in allowed sources", request.call_id,
                        request.source)  # fmt: skip
            self._reject_invite(request, 403, "Forbidden")
            return
        # D5: 100 Trying at once stops the caller's INVITE retransmissions.
        self._respond(request, 100, reason="Trying")
        source_ip = request.source[0] if request.source else ""
        now = asyncio.get_running_loop().time()
        refusal = self.admission.decide(
            source_ip,
            now,
            confirmed_calls=sum(c.state == CallState.CONFIRMED for c in self.calls.values()),
            unconfirmed_from_source=sum(
                c.state != CallState.CONFIRMED and c.source_ip == source_ip
                for c in self.calls.values()
            ),
            overloaded=self.overload is not None and self.overload.overloaded(now),
        )
        if refusal is not None:
            log.warning("INVITE %s from %s refused: %d %s", request.call_id, source_ip,
                        refusal.status_code, refusal.reason)  # fmt: skip
            self._reject_invite(
                request, refusal.status_code, refusal.reason, extra_headers=refusal.extra_headers
            )
            return
        try:
            self._offer_call(request, received_at)
        except Exception:
            # Every INVITE gets a final answer, whatever went wrong in here.
            log.exception("INVITE %s: internal error", request.call_id)
            self._reject_invite(request, 500, "Server Internal Error")

    def _offer_call(self, request: SipMessage, received_at: float) -> None:
        """Negotiate the offer, ring, and answer (in a task): or a final error response."""
        try:
            parse_uri(request.request_uri) if request.request_uri[:3].lower() == "sip" else None
            sdp = sdp_from_body(request.first("Content-Type") or "", request.content)
            if not sdp:
                raise NoCommonCodec("no SDP offer in INVITE (late offer is not supported)")
            media = _usable(negotiate(parse_audio_offer(sdp)))
        except (SdpError, UriError) as error:
            log.warning("rejecting INVITE %s: %s", request.call_id, error)
            self._reject_invite(request, 400, "Bad Request", extra_headers=_warning(str(error)))
            return
        except NotAcceptableHere as error:
            log.info("rejecting INVITE %s: %s", request.call_id, error)
            self._reject_invite(
                request, 488, "Not Acceptable Here", extra_headers=_warning(str(error))
            )
            return
        try:
            rtp_socket = self.rtp_ports.allocate()
        except OSError:
            rtp_socket = self.lifecycle.allocate_after_evicting_half_open()
            if rtp_socket is None:
                log.error("no RTP port for %s: all in use", request.call_id)
                self._reject_invite(request, 503, "Service Unavailable")
                return
        dialog = self.messages.new_uas_dialog(request)
        invite = self.transactions.server_invite(request)
        assert invite is not None, "INVITE not read through the transaction layer"
        call = Call(
            call_id=request.call_id,
            caller=_caller_name(request),
            dialog=dialog,
            media=media,
            invite=invite,
            rtp_port=rtp_socket.getsockname()[1],
            hangup_callback=self.lifecycle.app_hangup,
            transfer_callback=self.transfer,
            rtp_socket=rtp_socket,
            source_ip=request.source[0] if request.source else "",
            events=self.lifecycle.events,
        )
        self.lifecycle.admit(call)
        log.info(
            "call %s from %s: %s, media to %s:%d",
            call.call_id,
            call.caller,
            media.codec,
            media.remote_address,
            media.remote_port,
        )
        self.transactions.respond(request, self.messages.ringing(request, dialog), 180)
        self.spawn(self._answer(call, received_at), call.call_id)

    def _source_allowed(self, request: SipMessage) -> bool:
        """Signalling-IP allowlist (e.g. a trunk provider's ranges); empty allows everyone."""
        networks = self.settings.allowed_networks
        if not networks or request.source is None:
            return True
        try:
            source = ip_address(request.source[0])
        except ValueError:
            return False
        return any(source in network for network in networks)

    def _reject_invite(
        self,
        request: SipMessage,
        status_code: int,
        reason: str,
        extra_headers: str = "",
        to_tag: str | None = None,
    ) -> None:
        """A final error response, retransmitted until the ACK (RFC 3261 17.2.1 Timer G)."""
        self._respond(
            request, status_code, reason=reason, to_tag=to_tag or self.messages.new_tag(),
            extra_headers=extra_headers,
        )  # fmt: skip

    async def _answer(self, call: Call, received_at: float) -> None:
        try:
            if self.settings.ring_seconds > 0:
                await asyncio.sleep(self.settings.ring_seconds)
            if call.state != CallState.RINGING:
                return
            self._send_answer(call, call.invite.request)
            answered = CallAnswered(call.call_id, time.perf_counter() - received_at)
            self.lifecycle.events.emit(answered)
            call.state = CallState.ANSWERED
            call.answered_at = time.time()
            call.answered_monotonic = asyncio.get_running_loop().time()
        except Exception:
            log.exception("call %s: could not answer", call.call_id)
            await self.lifecycle.end_call(call, "answer failed")

    def _send_answer(self, call: Call, request: SipMessage) -> None:
        sdp = build_answer(
            call.media,
            local_address=self.messages.advertised_ip,
            local_port=call.rtp_port,
            session_id=call.sdp_session_id,
            session_version=call.sdp_session_version,
        )
        transaction = self.transactions.server_invite(request)
        if call.invite is not None and call.invite is not transaction:
            self.transactions.stop(call.invite)  # a re-INVITE: the call's latest INVITE
        call.invite = transaction

        def no_ack() -> None:
            if call.state != CallState.ANSWERED:
                return  # a re-INVITE's 200 without its ACK: the call itself goes on
            # Never confirmed, so no media was started: release it without a BYE, which
            # would only be one more request aimed at whatever the INVITE claimed to be.
            log.warning("call %s: no ACK for our 200 OK, released", call.call_id)
            self.lifecycle.release_unconfirmed(call, "no ACK")

        answer = self.messages.answer(request, call.dialog, sdp)
        self.transactions.respond(request, answer, 200, on_timeout=no_ack)

    def _handle_ack(self, request: SipMessage) -> None:
        """The ACK of our 2xx (an ACK of a non-2xx never gets here: its transaction takes it)."""
        call = self._find_dialog_call(request)
        if call is None:
            return
        if call.invite is not None:
            self.transactions.acknowledged(call.invite)
        if request.content:
            self._apply_remote_sdp(call, request)  # answer to our offer (late offer)
        if call.state == CallState.ANSWERED:
            call.state = CallState.CONFIRMED
            self.lifecycle.start_app(call, start_media=True)

    def _handle_bye(self, request: SipMessage) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        self._respond(request, 200)
        self.spawn(self.lifecycle.end_call(call, "caller hung up"), call.call_id)

    def _handle_cancel(self, request: SipMessage) -> None:
        call = self.calls.get(request.call_id)
        if call is None or call.invite is None or call.invite.key != request.transaction_key:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        self._respond(request, 200, to_tag=call.dialog.local_tag)
        if call.state != CallState.RINGING:
            return  # already answered: CANCEL has no effect (RFC 3261 9.2)
        self._reject_invite(
            call.invite.request, 487, "Request Terminated", to_tag=call.dialog.local_tag
        )
        self.spawn(self.lifecycle.end_call(call, "caller cancelled"), call.call_id)

    def _handle_reinvite(self, request: SipMessage) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        invite = call.invite
        if invite is not None and invite.request.cseq == request.cseq and invite.last_response:
            # The same CSeq again: our answer again.
            self.transactions.transport.send(invite.last_response, request.response_destination)
            return
        if request.content:
            try:
                sdp = sdp_from_body(request.first("Content-Type") or "", request.content)
                media = _usable(negotiate(parse_audio_offer(sdp)))
            except (SdpError, NotAcceptableHere) as error:
                self._respond(
                    request, 488, reason="Not Acceptable Here", extra_headers=_warning(str(error))
                )
                return
            self._update_media(call, media)
        # With no SDP the 200 carries our current description as an offer (RFC 3264 8).
        call.sdp_session_version += 1
        self._send_answer(call, request)

    def _apply_remote_sdp(self, call: Call, request: SipMessage) -> None:
        try:
            sdp = sdp_from_body(request.first("Content-Type") or "", request.content)
            self._update_media(call, _usable(negotiate(parse_audio_offer(sdp))))
        except (SdpError, NotAcceptableHere) as error:
            log.warning("call %s: ignoring unusable SDP in ACK: %s", call.call_id, error)

    def _update_media(self, call: Call, media: NegotiatedMedia) -> None:
        call.media = media
        if call.rtp is not None:
            if not media.on_hold:  # 0.0.0.0 (RFC 2543 hold) is no address to send to
                call.rtp.update_remote((media.remote_address, media.remote_port))
            # sendonly / inactive / 0.0.0.0 from the caller: hold; sendrecv again: unhold.
            if media.on_hold != call.held:
                log.info("call %s %s", call.call_id, "on hold" if media.on_hold else "resumed")
            call.set_held(media.on_hold)

    def _handle_info(self, request: SipMessage) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        self._respond(request, 200)
        content_type = (request.first("Content-Type") or "").lower()
        if content_type.startswith("application/dtmf-relay"):
            for line in request.content.decode("utf-8", "replace").splitlines():
                name, _, value = line.partition("=")
                digit = value.strip().upper()
                if name.strip().lower() == "signal" and len(digit) == 1 and digit in DTMF_SIGNALS:
                    call.deliver_digit(digit)

    def _handle_notify(self, request: SipMessage) -> None:
        """Progress of our REFER (RFC 3515): the body is a sipfrag status line."""
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        self._respond(request, 200)
        status_line = request.content.decode("utf-8", "replace").strip().split("\r\n")[0]
        parts = status_line.split()
        if len(parts) >= 2 and parts[0] == "SIP/2.0" and parts[1].isdigit():
            code = int(parts[1])
            waiter = call.transfer_result
            if code >= 200 and waiter is not None and not waiter.done():
                waiter.set_result(code)
