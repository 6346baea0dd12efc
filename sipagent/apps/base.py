"""What a call handler ("app") sees of a call, and how apps are chosen by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sipagent.config import AgentSettings


class CallChannel(Protocol):
    """One answered call, from the app's side. Audio is always 8 kHz mu-law, 20 ms frames."""

    call_id: str
    caller: str

    def frames(self) -> AsyncIterator[bytes]:
        """Ordered 160-byte inbound frames after the jitter buffer; ends when the call ends."""
        ...

    def digits(self) -> AsyncIterator[str]:
        """DTMF digits, once per key press; ends when the call ends."""
        ...

    def play(self, mulaw: bytes) -> None:
        """Queue audio for the caller; it is paced out in 20 ms frames."""
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


class CallApp(Protocol):
    async def handle(self, call: CallChannel) -> None:
        """Runs from ACK until it returns (then we hang up) or the caller hangs up (cancelled)."""
        ...


def build_app(name: str, settings: AgentSettings) -> CallApp:
    from sipagent.apps.echo import EchoApp
    from sipagent.apps.player import PlayerApp

    if name == "echo":
        return EchoApp()
    if name == "player":
        return PlayerApp.from_settings(settings)
    if name == "receptionist":
        from sipagent.apps.receptionist import ReceptionistApp

        return ReceptionistApp.from_settings(settings)
    raise ValueError(f"unknown app {name!r}: choose echo, player or receptionist")
