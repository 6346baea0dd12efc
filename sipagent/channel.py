"""The one contract between the telephony side (sipagent/sip) and the apps that answer calls.

The SIP `Call`, the test stand-ins and the demo's simulated caller all implement `CallChannel`;
apps implement `CallApp` and may offer the optional capabilities below, which the endpoint and
the CLI discover with `isinstance` (runtime-checkable Protocols), never by attribute name: a
rename then fails the type check and the tests instead of quietly writing an empty call record.

This module imports nothing from sipagent at run time, so every other module can import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sipagent.conversation.session import ConversationSession
    from sipagent.observability.events import EventBus


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who called whom and when, as the telephony side knows it once the call is answered."""

    call_id: str
    from_uri: str  # the remote party (the caller on an inbound call)
    to_uri: str  # the local party (us on an inbound call)
    started_at: float | None  # wall clock (time.time()) when the INVITE arrived or was sent
    answered_at: float | None  # wall clock when the call was answered


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended; complete once `CallChannel.ended` is set."""

    ended_at: float | None  # wall clock
    end_reason: str
    recording_path: str | None  # the two-channel WAV, when calls are recorded


@dataclass(frozen=True, slots=True)
class MediaTimes:
    """Loop-clock stamps of what the media side has actually put on the wire."""

    talkspurt_started_at: float | None = None  # first packet of the current talkspurt sent
    last_voiced_sent_at: float | None = None  # last packet carrying queued audio sent


@runtime_checkable
class CallChannel(Protocol):
    """One answered call, from the app's side. Audio is always 8 kHz mu-law, 20 ms frames."""

    call_id: str
    caller: str

    @property
    def events(self) -> EventBus:
        """Where the app's conversation reports turns, barge-ins and provider failures (the
        endpoint's bus, which metrics observe)."""
        ...

    @property
    def info(self) -> CallInfo: ...

    @property
    def ended(self) -> asyncio.Event:
        """Set once the call is over (either side hung up); `end` is then complete."""
        ...

    @property
    def end(self) -> CallEnd: ...

    @property
    def media_times(self) -> MediaTimes: ...

    def frames(self) -> AsyncIterator[bytes]:
        """Ordered 160-byte inbound frames after the jitter buffer; ends when the call ends."""
        ...

    def digits(self) -> AsyncIterator[str]:
        """DTMF digits, once per key press; ends when the call ends."""
        ...

    def play(self, mulaw: bytes) -> None:
        """Queue audio for the caller; it is paced out in 20 ms frames."""
        ...

    def end_talkspurt(self) -> None:
        """Say that the audio played so far is a whole utterance: the silence after it is the
        end of speech, not a source that fell behind (the RTP clock's lead then goes back
        gently instead of in one long interval)."""
        ...

    def flush(self) -> int:
        """Drop all queued outgoing audio now; returns the bytes dropped."""
        ...

    def pause(self) -> None:
        """Go quiet at once, keeping the queued audio (a barge-in not yet confirmed)."""
        ...

    def resume(self) -> None:
        """Continue the paused audio."""
        ...

    @property
    def sent_audio_ms(self) -> float: ...

    @property
    def queued_ms(self) -> float: ...

    async def drained(self) -> None:
        """Return once every queued frame has gone out (or was flushed, or the call ended)."""
        ...

    async def first_packet_sent(self, previous: float | None = None) -> float | None:
        """The wire time of a talkspurt's first packet once it differs from `previous` (the
        `media_times.talkspurt_started_at` read before playing); None if media ends first."""
        ...

    @property
    def on_hold(self) -> bool:
        """True while the caller has the call on hold (SDP a=sendonly / a=inactive). The
        telephony side already keeps every outgoing frame queued while held (nothing is sent)."""
        ...

    def hold_changes(self) -> AsyncIterator[bool]:
        """Yields True when the caller puts the call on hold, False when they take it off hold;
        ends when the call ends."""
        ...

    async def hangup(self, reason: str = "app hangup") -> None: ...

    async def transfer(self, target_uri: str) -> bool:
        """Blind transfer (REFER); False when it could not be done."""
        ...


@runtime_checkable
class CallApp(Protocol):
    async def handle(self, call: CallChannel) -> None:
        """Runs from ACK until it returns (then we hang up) or the caller hangs up (cancelled)."""
        ...


# -- optional app capabilities ------------------------------------------------------------


@runtime_checkable
class SaysFarewell(Protocol):
    """An app with something to say before the agent hangs up at shutdown."""

    async def farewell(self, call: CallChannel) -> None: ...


@runtime_checkable
class DrainableRecorder(Protocol):
    async def drain(self) -> None:
        """Wait for the call-record writes still running in the background."""
        ...


@runtime_checkable
class RecordsCalls(Protocol):
    """An app that writes call records in the background; drain them before the process
    exits or the last calls' ends are lost."""

    @property
    def recorder(self) -> DrainableRecorder | None: ...


@runtime_checkable
class HasConversations(Protocol):
    """An app that runs a conversation per call (for /status, /metrics and reports)."""

    @property
    def sessions(self) -> Mapping[str, ConversationSession]: ...


async def drain_call_records(app: CallApp) -> None:
    """Wait for an app's background call-record writes, if it has any (no time limit)."""
    if isinstance(app, RecordsCalls) and app.recorder is not None:
        await app.recorder.drain()


def conversations_of(app: CallApp) -> Mapping[str, ConversationSession]:
    """The app's conversations by call id; empty for apps without any (echo, player)."""
    return app.sessions if isinstance(app, HasConversations) else {}
