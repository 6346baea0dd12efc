"""A call from confirmation to its end, either direction: media, app, recording, BYE, clean-up.

`uas` and `uac` create calls; this runs them: it opens the RTP session, starts the app,
records, hangs up with a BYE through the dialog's route set (pyVoIP D1, D6), releases the
RTP port and reports the ended call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sipagent.channel import CallApp
from sipagent.config import AgentSettings
from sipagent.media.ports import RtpPortAllocator
from sipagent.media.recording import TwoChannelRecorder
from sipagent.media.session import RtpSession
from sipagent.observability.events import CallEnded, CallStarted, EventBus
from sipagent.sip.call import Call, CallState
from sipagent.sip.factory import MessageFactory
from sipagent.sip.message import OutgoingRequest, SipMessage
from sipagent.sip.sdp import NegotiatedMedia
from sipagent.sip.transaction_layer import TransactionLayer, TransactionTimeout
from sipagent.sip.uri import UriError, parse_uri

log = logging.getLogger("sipagent.sip")

APP_GRACE_SECONDS = 2.0  # after hang-up, the app may finish writing before it is cancelled
HALF_OPEN_GRACE = 2.0  # an ACK later than this after our 200 OK: the dialog may be evicted
BYE_TIMEOUT = 8.0
ENDED_CALLS_KEPT = 100

Spawn = Callable[..., "asyncio.Task[Any]"]  # (coroutine, call_id=None): a tracked task
SendRequest = Callable[..., Awaitable[SipMessage]]  # the endpoint's non-INVITE transaction


class CallLifecycle:
    """The calls in progress (`calls`) and the last ended ones (`ended_calls`)."""

    def __init__(
        self,
        settings: AgentSettings,
        app: CallApp,
        *,
        calls: dict[str, Call],
        ended_calls: list[Call],
        messages: MessageFactory,
        transactions: TransactionLayer,
        rtp_ports: RtpPortAllocator,
        send_request: SendRequest,
        spawn: Spawn,
        on_call_ended: Callable[[Call], None] | None,
        events: EventBus,
    ) -> None:
        self.settings = settings
        self.app = app
        self.calls = calls
        self.ended_calls = ended_calls
        self.messages = messages
        self.transactions = transactions
        self.rtp_ports = rtp_ports
        self.send_request = send_request
        self.spawn = spawn
        self.on_call_ended = on_call_ended
        self.events = events
        # Per-call state kept elsewhere (the UAC's ACKs) is dropped through these.
        self.on_forget: list[Callable[[Call], None]] = []

    def admit(self, call: Call) -> None:
        """A new dialog, either direction: it is now one of the calls in progress."""
        self.calls[call.call_id] = call
        self.events.emit(CallStarted(call.call_id, call.caller))

    # -- media and app ----------------------------------------------------------------------
    async def open_media(self, call: Call, sock: Any, media: NegotiatedMedia) -> None:
        """The call's RTP session on its bound socket, and its recorder when asked for."""
        call.rtp = await RtpSession.open(
            sock=sock,
            remote=(media.remote_address, media.remote_port),
            payload_type=media.payload_type,
            telephone_event_pt=media.telephone_event_pt,
            on_audio=call.deliver_audio,
            on_dtmf=call.deliver_digit,
            call_id=call.call_id,
            codec=media.codec,
            on_transport_lost=lambda reason: self._media_lost(call, reason),
            media_thread=self.settings.media_thread,
        )
        self._start_recording(call)

    async def start_media(self, call: Call) -> None:
        """Media starts with the ACK: a dialog that is never confirmed costs a bound socket
        only, and sends nothing (no RTP aimed at whatever address an unACKed offer named)."""
        socket_ = call.rtp_socket
        call.rtp_socket = None
        if socket_ is None:
            return
        await self.open_media(call, socket_, call.media)
        call.set_held(call.media.on_hold)

    def start_app(self, call: Call, app: CallApp | None = None, *, start_media: bool) -> None:
        call.app_task = self.spawn(self._run_app(call, app, start_media=start_media), call.call_id)

    async def _run_app(self, call: Call, app: CallApp | None, *, start_media: bool) -> None:
        try:
            if start_media:
                await self.start_media(call)
            await (app or self.app).handle(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: app failed", call.call_id)
        if call.state != CallState.ENDED:
            # Let the last queued audio play out before the BYE.
            await call.drained()  # resolves when the call's media closes, too
            await self.app_hangup(call, "app finished")

    def _media_lost(self, call: Call, reason: str) -> None:
        """The call's RTP socket died (asyncio closed it): the call is silent for good, so it
        is ended with a BYE rather than left up and mute."""
        if call.state != CallState.ENDED:
            log.warning("call %s: media lost (%s), hanging up", call.call_id, reason)
            self.spawn(self.hangup(call, f"media lost: {reason}"), call.call_id)

    def _start_recording(self, call: Call) -> None:
        if self.settings.record_calls_dir and call.rtp is not None:
            call.rtp.recorder = TwoChannelRecorder()
            safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", call.call_id)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(call.started_at))
            call.recording_path = str(
                Path(self.settings.record_calls_dir) / f"{stamp}-{safe_id}.wav"
            )

    def _write_recording(self, call: Call) -> None:
        recorder = call.rtp.recorder if call.rtp is not None else None
        if recorder is None or call.recording_path is None:
            return
        try:
            recorder.write(Path(call.recording_path))
        except OSError as error:
            log.error("call %s: could not write recording: %s", call.call_id, error)
            call.recording_path = None

    # -- unconfirmed dialogs ----------------------------------------------------------------
    def allocate_after_evicting_half_open(self) -> Any:
        """Out of RTP ports: end the oldest dialog whose ACK is overdue (a real caller's ACK
        comes within a round trip), and take its port. None if there is none to end."""
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
        self.release_unconfirmed(oldest, "no ACK (evicted)")
        try:
            return self.rtp_ports.allocate()
        except OSError:
            return None

    def release_unconfirmed(self, call: Call, reason: str) -> None:
        """End a dialog that never got its ACK: no media was started, nothing to wait for."""
        if call.invite is not None:
            self.transactions.stop(call.invite)
        call.mark_ended(reason)
        self.calls.pop(call.call_id, None)
        if call.rtp_socket is not None:
            call.rtp_socket.close()
            call.rtp_socket = None
        self.rtp_ports.release(call.rtp_port)
        self._record_ended(call)
        self._report_ended(call)
        if self.on_call_ended is not None:
            self.on_call_ended(call)

    # -- ending calls -----------------------------------------------------------------------
    async def hangup(self, call: Call, reason: str, *, wait_for_app: bool = True) -> None:
        """Our side ends the call: BYE through the dialog's route set (D1, D6).

        Runs in its own task: whoever asked (often the app itself, whose task is about to be
        cancelled) cannot cut the BYE transaction or the media clean-up short.
        """
        if call.state == CallState.ENDED:
            return
        await asyncio.shield(self.spawn(self._hangup(call, reason, wait_for_app)))

    async def app_hangup(self, call: Call, reason: str) -> None:
        """An app hanging up its own call: do not wait for that app to finish first."""
        await self.hangup(call, reason, wait_for_app=False)

    async def _hangup(self, call: Call, reason: str, wait_for_app: bool) -> None:
        if call.state == CallState.ENDED:
            return
        if call.state == CallState.RINGING:
            await self.end_call(call, reason)
            return
        if call.state == CallState.ANSWERED:
            # Answered, never ACKed: no media, no app. Released without a BYE (which would wait
            # 8 s for a peer that may not exist), like a dialog that timed out.
            self.release_unconfirmed(call, reason)
            return
        bye = self.messages.bye(call.dialog)
        bye_task = self.spawn(self._send_bye(call, bye))
        await self.end_call(call, reason, wait_for_app=wait_for_app)
        await bye_task

    async def _send_bye(self, call: Call, bye: OutgoingRequest) -> None:
        try:
            destination = parse_uri(call.dialog.next_hop_uri).destination
            response = await self.send_request(bye, destination, timeout=BYE_TIMEOUT)
            call.bye_status = response.status_code
            log.info("call %s: BYE answered %d", call.call_id, response.status_code)
        except (TransactionTimeout, UriError) as error:
            log.warning("call %s: BYE not answered: %s", call.call_id, error)

    async def end_call(self, call: Call, reason: str, *, wait_for_app: bool = True) -> None:
        if call.state == CallState.ENDED:
            return
        log.info("call %s ended: %s", call.call_id, reason)
        if call.invite is not None:
            self.transactions.stop(call.invite)
        call.mark_ended(reason)
        self.calls.pop(call.call_id, None)
        self._record_ended(call)
        app_task = call.app_task
        if wait_for_app and app_task is not None and not app_task.done():
            _, pending = await asyncio.wait({app_task}, timeout=APP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        if call.rtp is not None:
            await call.rtp.close()
        self._report_ended(call)  # media closed: its figures are final
        if call.rtp is not None:
            # A long call's WAV takes hundreds of ms to write: off the loop, where every
            # other call's RTP is paced.
            await asyncio.to_thread(self._write_recording, call)
        if call.rtp_socket is not None:  # answered, never ACKed: no session was opened
            call.rtp_socket.close()
            call.rtp_socket = None
        self.rtp_ports.release(call.rtp_port)
        if self.on_call_ended is not None:
            self.on_call_ended(call)

    def _report_ended(self, call: Call) -> None:
        """Emit the call's end once it is torn down (its media closed, if it had any)."""
        if self.events.observed:  # the final RTP stats cost a sort of the call's tick samples
            duration = None
            if call.answered_at is not None and call.ended_at is not None:
                duration = max(0.0, call.ended_at - call.answered_at)
            media = call.rtp.stats if call.rtp is not None else None
            self.events.emit(CallEnded(call.call_id, call.end_reason, duration, media))

    def _record_ended(self, call: Call) -> None:
        self.ended_calls.append(call)
        del self.ended_calls[:-ENDED_CALLS_KEPT]
        for forget in self.on_forget:
            forget(call)
