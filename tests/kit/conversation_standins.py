"""In-memory stand-ins for what a ConversationSession talks to: the call and the providers.

They implement the session's own Protocols (CallChannel, SpeechToText, TextToSpeech); every
step is released by something the test does, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sipagent.channel import CallEnd, CallInfo, MediaTimes
from sipagent.observability.events import Event, EventBus
from sipagent.providers.base import ProviderError, SttEvent, SttEventKind


class MemoryCall:
    """Plays instantly. Like RtpSession on a quiet line, every play() puts a packet on the
    "wire" at once and stamps `media_times.talkspurt_started_at`; `wire_stamps` keeps them
    all."""

    call_id = "unit-call"
    caller = "sip:caller@127.0.0.1"

    def __init__(self) -> None:
        self.played = bytearray()
        self.played_at_flush: list[int] = []
        self.talkspurts_ended = 0
        self.media_times = MediaTimes()
        self.info = CallInfo(self.call_id, self.caller, "sip:agent@127.0.0.1", None, None)
        self.transfers: list[str] = []
        self.end_reason = ""
        self.wire_stamps: list[float] = []
        self.ended = asyncio.Event()
        self.on_hold = False
        self.holds: asyncio.Queue[bool] = asyncio.Queue()
        self.events = EventBus()
        self.emitted: list[Event] = []  # everything the conversation reported, in order
        self.events.subscribe(self.emitted.append)

    def set_hold(self, held: bool) -> None:
        """The caller's re-INVITE puts the call on hold (True) or takes it off (False)."""
        self.on_hold = held
        self.holds.put_nowait(held)

    async def hold_changes(self) -> AsyncIterator[bool]:
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            while True:
                change = asyncio.ensure_future(self.holds.get())
                await asyncio.wait({change, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    change.cancel()
                    return
                yield change.result()
        finally:
            ended.cancel()

    async def frames(self) -> AsyncIterator[bytes]:
        await self.ended.wait()
        return
        yield b""

    async def digits(self) -> AsyncIterator[str]:
        await self.ended.wait()
        return
        yield ""

    def play(self, mulaw: bytes) -> None:
        self.played += mulaw
        stamp = asyncio.get_running_loop().time() + len(self.wire_stamps) * 1e-6  # distinct
        self.media_times = MediaTimes(talkspurt_started_at=stamp)
        self.wire_stamps.append(stamp)

    def end_talkspurt(self) -> None:
        self.talkspurts_ended += 1

    def flush(self) -> int:
        self.played_at_flush.append(len(self.played))
        return 0

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    @property
    def sent_audio_ms(self) -> float:
        return len(self.played) / 8

    @property
    def queued_ms(self) -> float:
        return 0.0

    async def drained(self) -> None:
        """Nothing is ever queued: play() sends at once."""

    async def first_packet_sent(self, previous: float | None = None) -> float | None:
        return self.media_times.talkspurt_started_at

    @property
    def end(self) -> CallEnd:
        return CallEnd(None, self.end_reason, None)

    async def hangup(self, reason: str = "app hangup") -> None:
        self.end_reason = self.end_reason or reason
        self.ended.set()

    async def transfer(self, target_uri: str) -> bool:
        """Refused (no REFER here); the target is kept for the test to check."""
        self.transfers.append(target_uri)
        return False


class PushedStt:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[SttEvent | None] = asyncio.Queue()

    async def start(self) -> None:
        pass

    def send_audio(self, mulaw: bytes) -> None:
        pass

    async def events(self) -> AsyncIterator[SttEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        self.queue.put_nowait(None)


class InstantTts:
    """Audio at once; records what it was asked to say; fails for texts in `failing`."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.texts: list[str] = []
        self.failing = failing

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        if text in self.failing:
            raise ProviderError("TTS: HTTP 500")
        yield b"\x10" * 160 * max(1, len(text) // 4)


async def wait_for(condition: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)
    assert condition(), what


def caller_says(stt: PushedStt, text: str) -> None:
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, text, speech_final=True))
