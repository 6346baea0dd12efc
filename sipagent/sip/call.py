"""One call: its dialog, its media session, and the channel its app talks to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sipagent.channel import CallEnd, CallInfo, MediaTimes
from sipagent.observability.events import EventBus
from sipagent.sip.dialog import DialogState
from sipagent.sip.sdp import NegotiatedMedia
from sipagent.sip.transaction import ServerInviteTransaction

if TYPE_CHECKING:
    from sipagent.media.session import RtpSession

_END = object()


class CallState(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"  # 200 OK sent, waiting for ACK
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass(eq=False)
class Call:
    call_id: str
    caller: str
    dialog: DialogState
    media: NegotiatedMedia
    invite: ServerInviteTransaction | None  # the INVITE we answered last (None: we called)
    rtp_port: int
    hangup_callback: Callable[[Call, str], Awaitable[None]]
    transfer_callback: Callable[[Call, str], Awaitable[bool]] | None = None
    state: CallState = CallState.RINGING
    rtp: RtpSession | None = None  # the call's media, from the ACK on
    sdp_session_version: int = 1  # SDP o= version, bumped per new offer
    sdp_session_id: int = field(default_factory=lambda: int(time.time()))
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    answered_monotonic: float | None = None  # when our 200 OK went out (loop clock)
    source_ip: str = ""  # where the INVITE came from (admission counts per source)
    rtp_socket: Any = None  # bound for the SDP answer; its media session starts at the ACK
    ended_at: float | None = None
    end_reason: str = ""
    app_task: asyncio.Task[None] | None = None
    recording_path: str | None = None
    bye_status: int | None = None  # final response to our BYE, when we hung up
    transfer_result: asyncio.Future[int] | None = None  # final sipfrag status of our REFER
    _frames: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _digits: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _hold_changes: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    held: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # The endpoint's bus (a call made outside an endpoint, in tests, gets its own).
    events: EventBus = field(default_factory=EventBus)

    # -- fed by the media session -----------------------------------------------------------
    def deliver_audio(self, frame: bytes) -> None:
        if self.state != CallState.ENDED:
            self._frames.put_nowait(frame)

    def deliver_digit(self, digit: str) -> None:
        if self.state != CallState.ENDED:
            self._digits.put_nowait(digit)

    def set_held(self, held: bool) -> None:
        """The caller put the call on hold (sendonly/inactive) or took it off: gate our
        sending and tell the app."""
        if held == self.held or self.state == CallState.ENDED:
            return
        self.held = held
        if self.rtp is not None:
            self.rtp.set_held(held)
        self._hold_changes.put_nowait(held)

    def mark_ended(self, reason: str) -> None:
        if self.state == CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.end_reason = reason
        self.ended_at = time.time()
        self._frames.put_nowait(_END)
        self._digits.put_nowait(_END)
        self._hold_changes.put_nowait(_END)
        self.ended.set()

    # -- the CallChannel the app sees -------------------------------------------------------
    @property
    def info(self) -> CallInfo:
        return CallInfo(
            call_id=self.call_id,
            from_uri=self.dialog.remote_party,
            to_uri=self.dialog.local_party,
            started_at=self.started_at,
            answered_at=self.answered_at,
        )

    @property
    def end(self) -> CallEnd:
        return CallEnd(self.ended_at, self.end_reason, self.recording_path)

    @property
    def media_times(self) -> MediaTimes:
        if self.rtp is None:
            return MediaTimes()
        return MediaTimes(self.rtp.talkspurt_started_at, self.rtp.last_voiced_sent_at)

    async def frames(self) -> AsyncIterator[bytes]:
        while (item := await self._frames.get()) is not _END:
            yield item

    async def digits(self) -> AsyncIterator[str]:
        while (item := await self._digits.get()) is not _END:
            yield item

    @property
    def on_hold(self) -> bool:
        return self.held

    async def hold_changes(self) -> AsyncIterator[bool]:
        while (item := await self._hold_changes.get()) is not _END:
            yield item

    def play(self, mulaw: bytes) -> None:
        if self.rtp is not None and self.state != CallState.ENDED:
            self.rtp.play(mulaw)

    def end_talkspurt(self) -> None:
        if self.rtp is not None:
            self.rtp.end_talkspurt()

    def flush(self) -> int:
        if self.rtp is None:
            return 0
        return self.rtp.flush().dropped_bytes

    def send_digits(self, digits: str) -> None:
        """Press keys towards the far end (RFC 4733), e.g. a simulated caller typing."""
        if self.rtp is not None:
            self.rtp.send_digits(digits)

    def pause(self) -> None:
        if self.rtp is not None:
            self.rtp.pause()

    def resume(self) -> None:
        if self.rtp is not None:
            self.rtp.resume()

    @property
    def sent_audio_ms(self) -> float:
        return self.rtp.sent_audio_ms if self.rtp is not None else 0.0

    @property
    def queued_ms(self) -> float:
        return self.rtp.queued_ms if self.rtp is not None else 0.0

    async def drained(self) -> None:
        if self.rtp is not None:
            await self.rtp.drained()

    async def first_packet_sent(self, previous: float | None = None) -> float | None:
        return await self.rtp.first_packet_sent(previous) if self.rtp is not None else None

    async def hangup(self, reason: str = "app hangup") -> None:
        await self.hangup_callback(self, reason)

    async def transfer(self, target_uri: str) -> bool:
        """Blind transfer (REFER); False when it could not be done."""
        if self.transfer_callback is None:
            return False
        return await self.transfer_callback(self, target_uri)

    def describe(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "caller": self.caller,
            "state": str(self.state),
            "codec": self.media.codec,
            "remote_media": f"{self.media.remote_address}:{self.media.remote_port}",
            "rtp_port": self.rtp_port,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "end_reason": self.end_reason,
        }
