"""The asyncio SIP user agent: one UDP socket, registration, inbound calls, in-dialog requests.

Replaces pyVoIP's receive thread and blocking pacing (see pyvoip_compat D2, D5): everything
runs on the event loop, every datagram is handled to completion or logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from sipagent.apps.base import CallApp
from sipagent.config import AgentSettings
from sipagent.logcontext import current_call_id
from sipagent.media.ports import RtpPortAllocator
from sipagent.media.recording import TwoChannelRecorder
from sipagent.media.session import RtpSession
from sipagent.media.source import validate_remote
from sipagent.sip.admission import AdmissionLimits, InviteAdmission
from sipagent.sip.call import Call, CallState
from sipagent.sip.digest import DigestChallenge, DigestError, parse_challenge
from sipagent.sip.factory import ALLOWED_METHODS, MessageFactory
from sipagent.sip.message import OutgoingRequest, SipMessage, SipMessageError
from sipagent.sip.registration import RegistrationPolicy
from sipagent.sip.registration_client import RegistrationClient
from sipagent.sip.resolver import HostResolver
from sipagent.sip.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    NotAcceptableHere,
    SdpError,
    UnusableAddress,
    build_answer,
    build_offer,
    negotiate,
    parse_audio_offer,
    sdp_from_body,
)
from sipagent.sip.transaction_layer import TransactionLayer, TransactionTimeout
from sipagent.sip.transport import UdpTransport
from sipagent.sip.uri import UriError, parse_uri

log = logging.getLogger("sipagent.sip")

NOT_ALLOWED = {"REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "PRACK", "UPDATE"}
TRANSFER_NOTIFY_WAIT = 5.0  # after 202 Accepted, how long a failure NOTIFY may take to arrive
DTMF_SIGNALS = set("0123456789*#ABCD")
APP_GRACE_SECONDS = 2.0  # after hang-up, the app may finish writing before it is cancelled
REQUEST_URI_SCHEMES = ("sip", "sips", "tel")  # others: 416 (RFC 3261 8.2.2.1)
SUPPORTED_OPTION_TAGS: frozenset[str] = frozenset()  # a Require naming others: 420 (8.2.2.3)
# Bodies we read, per method; another Content-Type gets 415 with Accept (RFC 3261 8.2.3).
BODY_TYPES = {
    "INVITE": ("application/sdp", "multipart/mixed"),
    "ACK": ("application/sdp", "multipart/mixed"),
    "INFO": ("application/dtmf-relay", "application/dtmf"),
    "NOTIFY": ("message/sipfrag",),
}
HALF_OPEN_GRACE = 2.0  # an ACK later than this after our 200 OK: the dialog may be evicted


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


class DialError(Exception):
    """An outbound call was not answered: busy, declined, not found, unreachable."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"{status_code} {reason}" if status_code else reason)
        self.status_code = status_code
        self.reason = reason


class SipEndpoint:
    """A SIP UA that registers (when a server is set) and answers calls with an app."""

    def __init__(
        self,
        settings: AgentSettings,
        app: CallApp,
        *,
        on_call_ended: Callable[[Call], None] | None = None,
        register: bool = True,
    ) -> None:
        """`register=False`: use the server as outbound proxy only (digest on the INVITE), never
        REGISTER: a test call must not replace the binding a serving agent holds."""
        self.settings = settings
        self.app = app
        self.on_call_ended = on_call_ended
        self.register = register
        self.calls: dict[str, Call] = {}
        self.ended_calls: list[Call] = []
        self.dropped: Counter[str] = Counter()
        self.udp = UdpTransport(self._on_datagram, dropped=self.dropped)
        self.transactions = TransactionLayer(self.udp)
        self.messages: MessageFactory | None = None
        self.registration_client: RegistrationClient | None = None
        self._answer_acks: dict[str, tuple[bytes, tuple[str, int]]] = {}  # re-ACK 2xx repeats
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rtp_ports: RtpPortAllocator | None = None
        self.resolver = HostResolver()
        self.answer_times: list[float] = []
        self.admission = InviteAdmission(
            AdmissionLimits(
                max_calls=settings.max_calls,
                max_unconfirmed_per_source=settings.max_unconfirmed_per_source,
                invites_per_second=settings.invites_per_second,
                invite_burst=max(1, int(settings.invites_per_second * 2)),
            )
        )
        self._allowed_networks = (
            settings.allowed_networks
        )  # INVITE received -> 200 OK sent, seconds

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def local_address(self) -> tuple[str, int]:
        return self.udp.local_address

    @property
    def registration(self) -> RegistrationPolicy | None:
        """Registration state for status and metrics (None: not registering)."""
        client = self.registration_client
        return client.policy if client is not None else None

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The SIP socket's asyncio transport (None while it is being re-opened)."""
        return self.udp.datagram_transport

    @property
    def transport_losses(self) -> int:
        return self.udp.losses

    @property
    def transport_state(self) -> dict[str, Any]:
        return self.udp.state

    async def start(self) -> None:
        bind = self.settings.bind_address
        await self.udp.open(bind.host, bind.port)
        port = self.local_address[1]
        advertised = self.settings.advertised_ip
        server = self.settings.server_address
        self.messages = MessageFactory(
            user=self.settings.user,
            password=self.settings.password.get_secret_value(),
            auth_user=self.settings.auth_user,
            domain=self.settings.sip_domain,
            server=(server.host, server.port) if server else None,
            advertised_ip=advertised,
            sip_port=port,
        )
        rtp_bind = bind.host if bind.host not in ("", "::") else "0.0.0.0"
        first, last = self.settings.rtp_port_range
        self._rtp_ports = RtpPortAllocator(first, last, rtp_bind)
        log.info("SIP listening on %s:%d, advertising %s:%d", bind.host, port, advertised, port)
        if server is not None and not self.register:
            log.info("calls go through %s; not registering", server)
        elif server is not None:
            self.registration_client = RegistrationClient(
                self.settings, self.messages, self.request
            )
            self.registration_client.start()
        else:
            log.info("peer-to-peer mode: call sip:%s@%s:%d", self.settings.user, advertised, port)

    async def stop(self, farewell_timeout: float = 8.0) -> None:
        # Callers hear a goodbye before the BYE when the app has one to say.
        farewell = getattr(self.app, "farewell", None)
        confirmed = [c for c in self.calls.values() if c.state == CallState.CONFIRMED]
        if farewell is not None and confirmed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(farewell(call) for call in confirmed), return_exceptions=True),
                    farewell_timeout,
                )
        for call in list(self.calls.values()):
            await self.hangup(call, "agent shutting down")
        if self.registration_client is not None:
            await self.registration_client.stop()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        # Cancelled tasks still run their clean-up: wait for it, or it races the shutdown.
        await asyncio.gather(*tasks, return_exceptions=True)
        self.transactions.close()
        await self.udp.close()

    def _spawn(self, coroutine: Any, call_id: str | None = None) -> asyncio.Task[Any]:
        # Tasks copy the current context: everything a call's tasks log carries its Call-ID.
        token = current_call_id.set(call_id) if call_id else None
        try:
            task = asyncio.create_task(coroutine)
        finally:
            if token is not None:
                current_call_id.reset(token)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- datagram entry point ---------------------------------------------------------------
    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF) or padding
        try:
            message = SipMessage(data, source)
        except SipMessageError as error:
            self.dropped[error.kind] += 1
            log.warning("dropped malformed SIP from %s:%d: %s", *source, error)
            return
        except Exception as error:  # a parser bug must not take the agent down
            self.dropped["parser error"] += 1
            log.warning("dropped unparseable SIP from %s:%d: %r", *source, error)
            return
        if message.defects and not message.is_request:
            self.dropped["malformed response"] += 1
            log.warning("dropped malformed response from %s:%d: %s", *source, message.defects[0])
            return
        try:
            if not message.is_request:
                self._handle_response(message)
            elif not self.transactions.receive_request(message):  # else a retransmission
                try:
                    self._handle_request(message)
                finally:
                    self.transactions.settle(message)
        except Exception:
            self.dropped["handler error"] += 1
            log.exception("error handling %s from %s:%d", message.heading[:80], *source)

    def _send(self, data: bytes, destination: tuple[str, int]) -> None:
        """Outside any transaction (ACKs of 2xx): see `UdpTransport.send`."""
        self.udp.send(data, destination)

    def _respond(self, request: SipMessage, status_code: int, **kwargs: Any) -> bytes:
        assert self.messages is not None
        response = self.messages.response(request, status_code, **kwargs)
        self.transactions.respond(request, response, status_code)
        return response

    # -- client transactions ----------------------------------------------------------------
    def _handle_response(self, response: SipMessage) -> None:
        if self.transactions.receive_response(response):
            return
        if response.cseq_method == "INVITE" and 200 <= response.status_code < 300:
            ack = self._answer_acks.get(response.call_id)
            if ack is not None:  # the 2xx was retransmitted: our ACK was lost, send it again
                self._send(*ack)
            return
        log.debug("stray response %s for %s", response.status_code, response.cseq_method)

    async def request(
        self,
        outgoing: OutgoingRequest,
        destination: tuple[str, int],
        *,
        timeout: float | None = None,
        max_interval: float | None = None,
    ) -> SipMessage:
        """Non-INVITE client transaction (RFC 3261 17.1.2): its final response, or
        TransactionTimeout. A host name in `destination` is resolved first, off the loop
        (UriError if it fails)."""
        destination = await self.resolver.resolve(*destination)
        return await self.transactions.request(
            outgoing, destination, timeout=timeout, max_interval=max_interval
        )

    # -- requests ---------------------------------------------------------------------------
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

    def _handle_request(self, request: SipMessage) -> None:
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
        assert self.messages is not None
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
        refusal = self.admission.decide(
            source_ip,
            asyncio.get_running_loop().time(),
            confirmed_calls=sum(c.state == CallState.CONFIRMED for c in self.calls.values()),
            unconfirmed_from_source=sum(
                c.state != CallState.CONFIRMED and c.source_ip == source_ip
                for c in self.calls.values()
            ),
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
        assert self.messages is not None and self._rtp_ports is not None
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
            rtp_socket = self._rtp_ports.allocate()
        except OSError:
            rtp_socket = self._allocate_after_evicting_half_open()
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
            hangup_callback=self.app_hangup,
            transfer_callback=self.transfer,
            rtp_socket=rtp_socket,
            source_ip=request.source[0] if request.source else "",
        )
        self.calls[call.call_id] = call
        log.info(
            "call %s from %s: %s, media to %s:%d",
            call.call_id,
            call.caller,
            media.codec,
            media.remote_address,
            media.remote_port,
        )
        self.transactions.respond(request, self.messages.ringing(request, dialog), 180)
        self._spawn(self._answer(call, received_at), call.call_id)

    def _allocate_after_evicting_half_open(self) -> Any:
        """Out of RTP ports: end the oldest dialog whose ACK is overdue (a real caller's ACK
        comes within a round trip), and take its port. None if there is none to end."""
        assert self._rtp_ports is not None
        now = asyncio.get_running_loop().time()
        stale = [
            call
            for call in self.calls.values()
            if call.state == CallState.ANSWERED
            and call.answered_monotonic is not None
            and now - call.answered_monotonic > HALF_OPEN_GRACE
        ]
        if not stale:
            return None
        oldest = min(stale, key=lambda call: call.answered_monotonic or 0.0)
        log.warning("call %s: no ACK after %.0f s, ended to free its port for a new caller",
                    oldest.call_id, now - (oldest.answered_monotonic or now))  # fmt: skip
        self._release_unconfirmed(oldest, "no ACK (evicted)")
        try:
            return self._rtp_ports.allocate()
        except OSError:
            return None

    def _release_unconfirmed(self, call: Call, reason: str) -> None:
        """End a dialog that never got its ACK: no media was started, nothing to wait for."""
        if call.invite is not None:
            self.transactions.stop(call.invite)
        call.mark_ended(reason)
        self.calls.pop(call.call_id, None)
        if call.rtp_socket is not None:
            call.rtp_socket.close()
            call.rtp_socket = None
        if self._rtp_ports is not None:
            self._rtp_ports.release(call.rtp_port)
        self.ended_calls.append(call)
        del self.ended_calls[:-100]
        if self.on_call_ended is not None:
            self.on_call_ended(call)

    def _start_recording(self, call: Call) -> None:
        if self.settings.record_calls_dir and call.session is not None:
            call.session.recorder = TwoChannelRecorder()
            safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", call.call_id)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(call.started_at))
            call.recording_path = str(
                Path(self.settings.record_calls_dir) / f"{stamp}-{safe_id}.wav"
            )

    def _write_recording(self, call: Call) -> None:
        recorder = call.session.recorder if call.session is not None else None
        if recorder is None or call.recording_path is None:
            return
        try:
            recorder.write(Path(call.recording_path))
        except OSError as error:
            log.error("call %s: could not write recording: %s", call.call_id, error)
            call.recording_path = None

    def _source_allowed(self, request: SipMessage) -> bool:
        """Signalling-IP allowlist (e.g. a trunk provider's ranges); empty allows everyone."""
        networks = self._allowed_networks
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
        assert self.messages is not None
        self._respond(
            request, status_code, reason=reason, to_tag=to_tag or self.messages.new_tag(),
            extra_headers=extra_headers,
        )  # fmt: skip

    def _media_lost(self, call: Call, reason: str) -> None:
        """The call's RTP socket died (asyncio closed it): the call is silent for good, so it
        is ended with a BYE rather than left up and mute."""
        if call.state != CallState.ENDED:
            log.warning("call %s: media lost (%s), hanging up", call.call_id, reason)
            self._spawn(self.hangup(call, f"media lost: {reason}"), call.call_id)

    async def _answer(self, call: Call, received_at: float) -> None:
        assert self.messages is not None
        try:
            if self.settings.ring_seconds > 0:
                await asyncio.sleep(self.settings.ring_seconds)
            if call.state != CallState.RINGING:
                return
            self._send_answer(call, call.invite.request)
            self.answer_times.append(time.perf_counter() - received_at)
            call.state = CallState.ANSWERED
            call.answered_at = time.time()
            call.answered_monotonic = asyncio.get_running_loop().time()
        except Exception:
            log.exception("call %s: could not answer", call.call_id)
            await self._end_call(call, "answer failed")

    async def _start_media(self, call: Call) -> None:
        """Media starts with the ACK: a dialog that is never confirmed costs a bound socket
        only, and sends nothing (no RTP aimed at whatever address an unACKed offer named)."""
        socket_ = call.rtp_socket
        call.rtp_socket = None
        if socket_ is None:
            return
        call.session = await RtpSession.open(
            sock=socket_,
            remote=(call.media.remote_address, call.media.remote_port),
            payload_type=call.media.payload_type,
            telephone_event_pt=call.media.telephone_event_pt,
            on_audio=call.deliver_audio,
            on_dtmf=call.deliver_digit,
            call_id=call.call_id,
            codec=call.media.codec,
            on_transport_lost=lambda reason: self._media_lost(call, reason),
        )
        call.set_held(call.media.on_hold)
        self._start_recording(call)

    def _send_answer(self, call: Call, request: SipMessage) -> None:
        assert self.messages is not None
        sdp = build_answer(
            call.media,
            local_address=self.messages.advertised_ip,
            local_port=call.rtp_port,
            session_id=call.session_id,
            session_version=call.session_version,
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
            self._release_unconfirmed(call, "no ACK")

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
            call.app_task = self._spawn(self._run_app(call, start_media=True), call.call_id)

    async def _run_app(
        self, call: Call, app: CallApp | None = None, *, start_media: bool = False
    ) -> None:
        try:
            if start_media:
                await self._start_media(call)
            await (app or self.app).handle(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: app failed", call.call_id)
        if call.state != CallState.ENDED:
            # Let the last queued audio play out before the BYE.
            while call.queued_ms > 0 and call.state != CallState.ENDED:
                await asyncio.sleep(0.02)
            await self.app_hangup(call, "app finished")

    def _handle_bye(self, request: SipMessage) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        self._respond(request, 200)
        self._spawn(self._end_call(call, "caller hung up"), call.call_id)

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
        self._spawn(self._end_call(call, "caller cancelled"), call.call_id)

    def _handle_reinvite(self, request: SipMessage) -> None:
        call = self._find_dialog_call(request)
        if call is None:
            self._respond(request, 481, reason="Call/Transaction Does Not Exist")
            return
        invite = call.invite
        if invite is not None and invite.request.cseq == request.cseq and invite.last_response:
            self._send(invite.last_response, request.response_destination)  # same CSeq: again
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
        call.session_version += 1
        self._send_answer(call, request)

    def _apply_remote_sdp(self, call: Call, request: SipMessage) -> None:
        try:
            sdp = sdp_from_body(request.first("Content-Type") or "", request.content)
            self._update_media(call, _usable(negotiate(parse_audio_offer(sdp))))
        except (SdpError, NotAcceptableHere) as error:
            log.warning("call %s: ignoring unusable SDP in ACK: %s", call.call_id, error)

    def _update_media(self, call: Call, media: NegotiatedMedia) -> None:
        call.media = media
        if call.session is not None:
            if not media.on_hold:  # 0.0.0.0 (RFC 2543 hold) is no address to send to
                call.session.update_remote((media.remote_address, media.remote_port))
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
                if (
                    name.strip().lower() == "signal"
                    and len(digit) == 1
                    and digit in "0123456789*#ABCD"
                ):
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

    async def transfer(self, call: Call, target_uri: str) -> bool:
        """Blind transfer with REFER (RFC 3515). True once the caller has been handed over
        (then we hang up); False if the far end refused or failed, so the app can say so."""
        if self.messages is None or call.state != CallState.CONFIRMED:
            return False
        refer = self.messages.in_dialog_request(
            call.dialog,
            "REFER",
            extra_headers=f"Refer-To: <{target_uri}>\r\nReferred-By: {self.messages.contact}\r\n",
        )
        call.transfer_result = asyncio.get_running_loop().create_future()
        try:
            destination = parse_uri(call.dialog.next_hop_uri).destination
            response = await self.request(refer, destination, timeout=8.0)
        except (TransactionTimeout, UriError) as error:
            log.warning("call %s: REFER failed: %s", call.call_id, error)
            return False
        if not 200 <= response.status_code < 300:
            log.info("call %s: REFER refused with %d", call.call_id, response.status_code)
            return False
        try:
            final = await asyncio.wait_for(call.transfer_result, TRANSFER_NOTIFY_WAIT)
        except TimeoutError:
            final = 200  # accepted and no failure reported: the caller is on their way
        if final >= 300:
            log.info("call %s: transfer failed (NOTIFY %d)", call.call_id, final)
            return False
        await self.hangup(call, f"transferred to {target_uri}")
        return True

    # -- outbound calls ---------------------------------------------------------------------
    async def dial(
        self, target_uri: str, app: CallApp | None = None, *, ring_timeout: float = 60.0
    ) -> Call:
        """Call `target_uri` (RFC 3261 UAC): offer PCMU/PCMA/telephone-event, answer digest
        challenges, ACK the 2xx, start media and the app. Raises DialError if not answered."""
        assert self.messages is not None and self._rtp_ports is not None
        target = parse_uri(target_uri)
        server = self.settings.server_address
        # With a registrar/trunk configured it is our outbound proxy; else go straight there.
        try:
            destination = await self.resolver.resolve(
                *((server.host, server.port) if server else target.destination)
            )
        except UriError as error:
            raise DialError(0, str(error)) from error
        rtp_socket = self._rtp_ports.allocate()
        rtp_port = rtp_socket.getsockname()[1]
        call_id, from_tag = self.messages.new_call_id(), self.messages.new_tag()
        session_id = int(time.time())
        offer = build_offer(
            local_address=self.messages.advertised_ip, local_port=rtp_port, session_id=session_id
        )
        challenges: dict[str, DigestChallenge] = {}
        try:
            for cseq in range(1, 4):
                invite = self.messages.invite_request(
                    target_uri, offer, call_id=call_id, from_tag=from_tag, cseq=cseq,
                    authorization=tuple(challenges.values()),
                )  # fmt: skip
                response = await self.transactions.invite(
                    invite, destination, ring_timeout=ring_timeout,
                    ack_for=partial(self.messages.ack_for_failure, invite, target_uri=target_uri),
                )  # fmt: skip
                if response.status_code in (401, 407):
                    header = (
                        "WWW-Authenticate" if response.status_code == 401 else "Proxy-Authenticate"
                    )
                    challenge = parse_challenge(
                        response.first(header) or "", proxy=response.status_code == 407
                    )
                    if header in challenges and not challenge.stale:
                        raise DialError(response.status_code, "credentials refused")
                    challenges[header] = challenge
                    continue
                break
            if not 200 <= response.status_code < 300:
                raise DialError(response.status_code, response.reason)
        except (TransactionTimeout, DigestError, SdpError) as error:
            rtp_socket.close()
            self._rtp_ports.release(rtp_port)
            raise DialError(0, str(error)) from error
        except DialError:
            rtp_socket.close()
            self._rtp_ports.release(rtp_port)
            raise
        return await self._confirm_outbound(response, from_tag, rtp_socket, app, session_id)

    async def _confirm_outbound(
        self,
        answer: SipMessage,
        from_tag: str,
        rtp_socket: Any,
        app: CallApp | None,
        session_id: int,
    ) -> Call:
        assert self.messages is not None
        dialog = self.messages.new_uac_dialog(answer, from_tag)
        ack = self.messages.ack_for_answer(dialog, answer.cseq)
        try:
            ack_destination = await self.resolver.resolve(
                *parse_uri(dialog.next_hop_uri).destination
            )
        except UriError as error:
            log.warning("outbound call %s: cannot send the ACK: %s", answer.call_id, error)
            ack_destination = ("0.0.0.0", 0)  # unsendable: the BYE below ends the call
        self._send(ack.data, ack_destination)
        self._answer_acks[answer.call_id] = (ack.data, ack_destination)
        try:
            media = negotiate(parse_audio_offer(answer.content))
        except (SdpError, NoCommonCodec) as error:
            log.warning("outbound call %s: unusable answer SDP: %s", answer.call_id, error)
            media = None
        call = Call(
            call_id=answer.call_id,
            caller=dialog.remote_party,
            dialog=dialog,
            media=media or NegotiatedMedia("0.0.0.0", 0, 0, "PCMU", None, "inactive"),
            invite=None,
            rtp_port=rtp_socket.getsockname()[1],
            hangup_callback=self.app_hangup,
            transfer_callback=self.transfer,
            session_id=session_id,
        )
        self.calls[call.call_id] = call
        if media is None:
            await self.hangup(call, "no usable media in the answer")
            raise DialError(488, "answer had no codec we offered")
        call.session = await RtpSession.open(
            sock=rtp_socket,
            remote=(media.remote_address, media.remote_port),
            payload_type=media.payload_type,
            telephone_event_pt=media.telephone_event_pt,
            on_audio=call.deliver_audio,
            on_dtmf=call.deliver_digit,
            call_id=call.call_id,
            codec=media.codec,
            on_transport_lost=lambda reason: self._media_lost(call, reason),
        )
        self._start_recording(call)
        call.state = CallState.CONFIRMED
        call.answered_at = time.time()
        log.info("outbound call %s answered: %s", call.call_id, media.codec)
        if app is not None:
            call.app_task = self._spawn(self._run_app(call, app), call.call_id)
        return call

    # -- ending calls -----------------------------------------------------------------------
    async def hangup(self, call: Call, reason: str, *, wait_for_app: bool = True) -> None:
        """Our side ends the call: BYE through the dialog's route set (D1, D6).

        Runs in its own task: whoever asked (often the app itself, whose task is about to be
        cancelled) cannot cut the BYE transaction or the media clean-up short.
        """
        if call.state == CallState.ENDED or self.messages is None:
            return
        await asyncio.shield(self._spawn(self._hangup(call, reason, wait_for_app)))

    async def app_hangup(self, call: Call, reason: str) -> None:
        """An app hanging up its own call: do not wait for that app to finish first."""
        await self.hangup(call, reason, wait_for_app=False)

    async def _hangup(self, call: Call, reason: str, wait_for_app: bool) -> None:
        assert self.messages is not None
        if call.state == CallState.ENDED:
            return
        if call.state == CallState.RINGING:
            await self._end_call(call, reason)
            return
        if call.state == CallState.ANSWERED:
            # Answered, never ACKed: no media, no app. Released without a BYE (which would wait
            # 8 s for a peer that may not exist), like a dialog that timed out.
            self._release_unconfirmed(call, reason)
            return
        bye = self.messages.bye(call.dialog)
        bye_task = self._spawn(self._send_bye(call, bye))
        await self._end_call(call, reason, wait_for_app=wait_for_app)
        await bye_task

    async def _send_bye(self, call: Call, bye: OutgoingRequest) -> None:
        try:
            destination = parse_uri(call.dialog.next_hop_uri).destination
            response = await self.request(bye, destination, timeout=8.0)
            call.bye_status = response.status_code
            log.info("call %s: BYE answered %d", call.call_id, response.status_code)
        except (TransactionTimeout, UriError) as error:
            log.warning("call %s: BYE not answered: %s", call.call_id, error)

    async def _end_call(self, call: Call, reason: str, *, wait_for_app: bool = True) -> None:
        if call.state == CallState.ENDED:
            return
        log.info("call %s ended: %s", call.call_id, reason)
        if call.invite is not None:
            self.transactions.stop(call.invite)
        call.mark_ended(reason)
        self.calls.pop(call.call_id, None)
        self._answer_acks.pop(call.call_id, None)
        self.ended_calls.append(call)
        del self.ended_calls[:-100]
        app_task = call.app_task
        if wait_for_app and app_task is not None and not app_task.done():
            _, pending = await asyncio.wait({app_task}, timeout=APP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        if call.session is not None:
            await call.session.close()
            # A long call's WAV takes hundreds of ms to write: off the loop, where every
            # other call's RTP is paced.
            await asyncio.to_thread(self._write_recording, call)
        if call.rtp_socket is not None:  # answered, never ACKed: no session was opened
            call.rtp_socket.close()
            call.rtp_socket = None
        if self._rtp_ports is not None:
            self._rtp_ports.release(call.rtp_port)
        if self.on_call_ended is not None:
            self.on_call_ended(call)

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        return {
            "sip": f"{self.local_address[0]}:{self.local_address[1]}" if self.transport else None,
            "sip_socket": self.transport_state,
            "registration": self.registration.status.as_dict(now) if self.registration else None,
            "calls": [call.describe() for call in self.calls.values()],
            "dropped_sip": dict(self.dropped),
        }
