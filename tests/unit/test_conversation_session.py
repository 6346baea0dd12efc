"""ConversationSession policy with in-memory stand-ins for the call and the providers.

The stand-ins implement the session's own Protocols (CallChannel, SpeechToText, LanguageModel,
TextToSpeech); every step is released by an event the test sets, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import InMemoryBookingStore
from sipagent.conversation.session import ConversationSession, ConversationSettings, Turn
from sipagent.providers.base import LlmChunk, ProviderError, SttEvent, SttEventKind
from sipagent.tools.receptionist import ReceptionistTools


class MemoryCall:
    """Plays instantly. Like RtpSession on a quiet line, every play() puts a packet on the
    "wire" at once and stamps `session.talkspurt_started_at`; `wire_stamps` keeps them all."""

    call_id = "unit-call"
    caller = "sip:caller@127.0.0.1"

    def __init__(self) -> None:
        self.played = bytearray()
        self.played_at_flush: list[int] = []
        self.session = SimpleNamespace(talkspurt_started_at=None)
        self.wire_stamps: list[float] = []
        self.ended = asyncio.Event()

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
        self.session.talkspurt_started_at = stamp
        self.wire_stamps.append(stamp)

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

    async def hangup(self, reason: str = "app hangup") -> None:
        self.ended.set()


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


class GatedLlm:
    """Says `text` once `go` is set; counts requests."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.go = asyncio.Event()
        self.requests = 0

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests += 1
        await self.go.wait()
        yield LlmChunk(text=self.text)
        yield LlmChunk(finish_reason="stop")


class InstantTts:
    """Audio at once; records what it was asked to say; fails for texts in `failing`."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.texts: list[str] = []
        self.failing = failing

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        if text in self.failing:
            raise ProviderError("TTS: HTTP 500")
        yield b"\x10" * 160 * max(1, len(text) // 4)


class GatedTts:
    """The first sentence's audio at once, the rest of it when `more` is set."""

    def __init__(self) -> None:
        self.more = asyncio.Event()
        self.texts: list[str] = []

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        yield b"\x20" * 320
        if len(self.texts) > 1:
            await self.more.wait()
        yield b"\x30" * 320


class FailingOnceLlm:
    def __init__(self, text: str) -> None:
        self.text = text
        self.requests = 0

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests += 1
        if self.requests == 1:
            raise ProviderError("OpenAI: HTTP 500")
        yield LlmChunk(text=self.text)
        yield LlmChunk(finish_reason="stop")


async def wait_for(condition: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)
    assert condition(), what


def make_session(
    call: MemoryCall, stt: PushedStt, llm: Any, tts: Any, **kwargs: Any
) -> ConversationSession:
    tools = ReceptionistTools(InMemoryBookingStore(), ClinicHours(), clock=datetime.now)
    return ConversationSession(
        call,
        stt=stt,
        llm=llm,
        tts=tts,
        tools=tools,
        settings=ConversationSettings(greeting="Hello."),
        **kwargs,
    )


async def test_turn_records_wait_until_the_reply_speaks() -> None:
    call, stt, llm = MemoryCall(), PushedStt(), GatedLlm("Sure, what day suits you?")
    recorded: list[tuple[int, str, str]] = []

    def on_turn(index: int, turn: Turn) -> None:
        recorded.append((index, turn.role, turn.text))

    session = make_session(call, stt, llm, InstantTts(), on_turn=on_turn)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: recorded == [(0, "assistant", "Hello.")], "the greeting recorded")

    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "I need a cleaning", speech_final=True))
    await wait_for(lambda: llm.requests == 1, "the LLM asked")
    for _ in range(20):
        await asyncio.sleep(0)
    # The caller's turn is known, but persisting it now would compete with the LLM request.
    assert [turn.role for turn in session.turns] == ["assistant", "user"]
    assert recorded == [(0, "assistant", "Hello.")]

    llm.go.set()
    await wait_for(lambda: len(recorded) == 3, "the user turn and the reply recorded")
    assert recorded == [
        (0, "assistant", "Hello."),
        (1, "user", "I need a cleaning"),
        (2, "assistant", "Sure, what day suits you?"),
    ]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_held_turn_records_are_written_when_the_call_ends_first() -> None:
    call, stt, llm = MemoryCall(), PushedStt(), GatedLlm("never said")
    recorded: list[tuple[int, str]] = []
    session = make_session(
        call,
        stt,
        llm,
        InstantTts(),
        on_turn=lambda index, turn: recorded.append((index, turn.role)),
    )
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(recorded) == 1, "the greeting recorded")
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "Hi, I have a toothache", speech_final=True))
    await wait_for(lambda: llm.requests == 1, "the LLM asked")
    call.ended.set()  # the caller hangs up while the agent is still thinking
    await asyncio.wait_for(runner, 5)
    assert recorded == [(0, "assistant"), (1, "user")]


async def test_an_llm_failure_is_apologised_for_and_retried_once() -> None:
    call, stt, llm, tts = MemoryCall(), PushedStt(), FailingOnceLlm("Tuesday works."), InstantTts()
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "Is Tuesday free?", speech_final=True))
    await wait_for(lambda: "Tuesday works." in tts.texts, "the retried reply spoken")
    assert tts.texts == ["Hello.", "Sorry, just one moment.", "Tuesday works."]
    assert llm.requests == 2
    assert session.provider_errors == ["llm: OpenAI: HTTP 500"]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_a_tts_failure_falls_back_to_the_other_voice_for_that_sentence_only() -> None:
    call, stt = MemoryCall(), PushedStt()
    llm = GatedLlm("Sure. Your cleaning is booked for Tuesday at ten.")
    llm.go.set()
    tts, fallback = InstantTts(failing=("Sure.",)), InstantTts()
    session = make_session(call, stt, llm, tts, fallback_tts=fallback)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "Book me in", speech_final=True))
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert tts.texts == ["Hello.", "Sure.", "Your cleaning is booked for Tuesday at ten."]
    assert fallback.texts == ["Sure."]  # only the sentence that failed
    assert session.provider_errors == ["tts: TTS: HTTP 500"]
    assert session.turns[2].text == "Sure. Your cleaning is booked for Tuesday at ten."
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_the_first_reply_packet_is_stamped_when_play_sends_it_at_once() -> None:
    call, stt = MemoryCall(), PushedStt()
    llm = GatedLlm("Sure. Your cleaning is booked for Tuesday at ten.")
    llm.go.set()
    session = make_session(call, stt, llm, InstantTts())
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    greeting_packets = len(call.wire_stamps)
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "Book me in", speech_final=True))
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert len(call.wire_stamps) > greeting_packets + 1  # two sentences, two plays
    # The reply's own first packet, not a later one (nor the greeting's).
    assert session.turns[2].timings.first_reply_packet == call.wire_stamps[greeting_packets]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class StallingLlm:
    """Streams `text`, then goes quiet (still "writing" the rest of its reply)."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        yield LlmChunk(text=self.text)
        await asyncio.Event().wait()
        yield LlmChunk(finish_reason="stop")


async def test_nothing_of_an_interrupted_reply_is_played_after_the_flush() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), GatedTts()
    # The first sentence is being spoken while the model still writes the second.
    llm = StallingLlm("Let me read you our opening hours. On Monday")
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    stt.queue.put_nowait(SttEvent(SttEventKind.FINAL, "When are you open?", speech_final=True))
    await wait_for(lambda: session.state == "speaking", "the reply speaking")
    # The reply's next audio arrives; in the same moment, before the player task has run,
    # the caller interrupts (the barge-in decision flushes the line and cancels the reply).
    tts.more.set()
    await asyncio.sleep(0)  # the synthesis task queues that audio for the player task
    session._interrupt_reply()
    await wait_for(lambda: session.state == "listening", "listening again")
    for _ in range(20):
        await asyncio.sleep(0)
    assert call.played_at_flush and len(call.played) == call.played_at_flush[-1]
    call.ended.set()
    await asyncio.wait_for(runner, 5)
