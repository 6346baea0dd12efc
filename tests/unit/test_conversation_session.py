"""ConversationSession policy with in-memory stand-ins for the call and the providers
(tests/conversation_standins.py, and LLM/TTS variants here); every step is released by an event
the test sets, so nothing depends on timing (except the idle-timer test, see there).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import InMemoryBookingStore
from sipagent.conversation.barge_in import BargeInAction
from sipagent.conversation.chunker import SentenceChunker
from sipagent.conversation.session import (
    APOLOGY,
    LLM_FALLBACK,
    STT_LOST,
    ConversationSession,
    ConversationSettings,
)
from sipagent.conversation.speaker import Reply
from sipagent.conversation.turns import Turn, TurnTimings
from sipagent.observability.events import BargeIn, ProviderFailure, ProviderStage, TurnCompleted
from sipagent.providers.base import LlmChunk, ProviderError, SttEvent, SttEventKind, ToolCall
from sipagent.providers.elevenlabs_tts import ElevenLabsTextToSpeech
from sipagent.tools.receptionist import ReceptionistTools, receptionist_prompt
from tests.kit.conversation_standins import InstantTts, MemoryCall, PushedStt, caller_says, wait_for
from tests.kit.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.kit.fakes.openai_server import history_error


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


class GatedTts:
    """The first sentence's audio at once, the rest of it when `more` is set."""

    def __init__(self) -> None:
        self.more = asyncio.Event()
        self.texts: list[str] = []

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        yield b"\x20" * 320
        if len(self.texts) > 1:
            await self.more.wait()
        yield b"\x30" * 320


class FailingOnceLlm:
    def __init__(self, text: str) -> None:
        self.text = text
        self.requests = 0
        self.error = ProviderError("OpenAI: HTTP 500")

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests += 1
        if self.requests == 1:
            raise self.error
        yield LlmChunk(text=self.text)
        yield LlmChunk(finish_reason="stop")


def make_session(
    call: MemoryCall,
    stt: PushedStt,
    llm: Any,
    tts: Any,
    *,
    store: InMemoryBookingStore | None = None,
    settings: ConversationSettings | None = None,
    **kwargs: Any,
) -> ConversationSession:
    tools = ReceptionistTools(
        store or InMemoryBookingStore(), ClinicHours(), clock=lambda: datetime.now(UTC)
    )
    return ConversationSession(
        call,
        stt=stt,
        llm=llm,
        tts=tts,
        toolset=tools,
        system_prompt=receptionist_prompt("Sarah", "Sunrise Dental", today=""),
        settings=settings or ConversationSettings(greeting="Hello."),
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


class ScriptedLlm:
    """Answers request N with `script[N]` (text, or a ToolCall), each once `go` allows it; like
    the strict fake, it refuses (ProviderError, HTTP 400) a history the real API would refuse."""

    def __init__(self, *script: str | ToolCall) -> None:
        self.script = list(script)
        self.requests: list[list[dict[str, Any]]] = []
        self.refusals: list[str] = []

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests.append(copy.deepcopy(messages))
        refused = history_error(messages)
        if refused is not None:
            self.refusals.append(refused.message)
            raise ProviderError(f"OpenAI: HTTP 400: {refused.message}")
        step = self.script.pop(0)
        if isinstance(step, ToolCall):
            yield LlmChunk(tool_calls=(step,), finish_reason="tool_calls")
        else:
            yield LlmChunk(text=step)
            yield LlmChunk(finish_reason="stop")


def booking_call(call_id: str = "call_book_1") -> ToolCall:
    day = datetime.now(UTC).date() + timedelta(days=7)
    while day.weekday() > 4:  # the clinic is open Monday to Friday
        day += timedelta(days=1)
    arguments = {
        "patient_name": "Ann Lee", "phone": "+12125550123", "preferred_date": day.isoformat(),
        "preferred_time": "10:00", "reason": "checkup",
    }  # fmt: skip
    return ToolCall(call_id, "book_appointment", json.dumps(arguments))


async def test_a_barge_in_during_a_slow_booking_keeps_the_history_valid_and_the_booking() -> None:
    call, stt, tts, store = MemoryCall(), PushedStt(), InstantTts(), InMemoryBookingStore()
    llm = ScriptedLlm(booking_call(), "Yes, and you're booked.")
    session = make_session(call, stt, llm, tts, store=store)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    async with store._lock:  # the database is busy: the booking waits inside the tool round
        caller_says(stt, "Book me a checkup next week at ten, Ann Lee, 212 555 0123")
        await wait_for(lambda: len(llm.requests) == 1, "the model asked to book")
        for _ in range(20):
            await asyncio.sleep(0)
        caller_says(stt, "And is parking available there?")  # a new turn while it waits
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(llm.requests) == 1  # the next request waits for the booking's outcome
    await wait_for(lambda: len(llm.requests) == 2, "the next turn asked")
    await wait_for(lambda: "Yes, and you're booked." in tts.texts, "the next turn answered")
    assert llm.refusals == []
    booked = await store.find_by_phone("+12125550123")
    assert len(booked) == 1
    answer = next(m for m in llm.requests[1] if m["role"] == "tool")
    assert json.loads(answer["content"])["appointment_id"] == booked[0].id
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_every_open_tool_call_is_answered_when_the_call_ends_mid_round() -> None:
    call, stt, store = MemoryCall(), PushedStt(), InMemoryBookingStore()
    llm = ScriptedLlm(booking_call())
    session = make_session(call, stt, llm, InstantTts(), store=store)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    async with store._lock:
        caller_says(stt, "Book me a checkup next week at ten")
        messages = session.history.messages
        await wait_for(lambda: any(m.get("tool_calls") for m in messages), "the tool round started")
        assert history_error(messages) is None  # valid while the tool still runs
        session._interrupt_reply()
        assert history_error(session.history.messages) is None
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class FailingLlm:
    """Every request fails with `error`."""

    def __init__(self, error: ProviderError) -> None:
        self.error = error
        self.requests = 0

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests += 1
        raise self.error
        yield LlmChunk()


async def test_two_llm_failures_in_a_row_end_in_the_spoken_fallback_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    llm = FailingLlm(ProviderError("OpenAI (gpt-4o-mini): HTTP 500"))
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    with caplog.at_level(logging.INFO, logger="sipagent"):
        caller_says(stt, "Is Tuesday free?")
        await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert tts.texts == ["Hello.", APOLOGY, *split_sentences(LLM_FALLBACK)]
    assert llm.requests == 2
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().count("HTTP 500") for r in failures] == [1, 1]
    assert all(r.exc_info is None for r in failures)  # one line each, no traceback
    call.ended.set()
    await asyncio.wait_for(runner, 5)


def split_sentences(text: str) -> list[str]:
    chunker = SentenceChunker(min_chars=1)
    return chunker.feed(text) + chunker.flush()


async def test_a_429_retry_after_is_waited_for_while_the_apology_plays() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    llm = FailingOnceLlm("Tuesday works.")
    llm.error = ProviderError("OpenAI: HTTP 429: rate limited", retry_after=2.5)
    session = make_session(call, stt, llm, tts, sleep=sleep)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "Is Tuesday free?")
    await wait_for(lambda: "Tuesday works." in tts.texts, "the retried reply spoken")
    assert slept == [2.5]
    assert tts.texts == ["Hello.", APOLOGY, "Tuesday works."]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_an_llm_error_that_cannot_heal_is_not_retried_for_the_rest_of_the_call() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    llm = FailingLlm(ProviderError("OpenAI: HTTP 401: authentication failed", heals=False))
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "Is Tuesday free?")
    await wait_for(lambda: len(session.turns) == 3, "the first reply recorded")
    caller_says(stt, "Hello?")
    await wait_for(lambda: len(session.turns) == 5, "the second reply recorded")
    assert llm.requests == 1
    fallback = split_sentences(LLM_FALLBACK)
    assert tts.texts == ["Hello.", *fallback, *fallback]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class CountingTts:
    """Holds every synthesis open until `release` is set; counts requests in flight."""

    def __init__(self, error: ProviderError | None = None) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.error = error

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.requests.append((text, context))
        if self.error is not None:
            raise self.error
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            yield b"\x10" * 160
            await self.release.wait()
            yield b"\x11" * 160
        finally:
            self.in_flight -= 1


REPLY = (
    "Sure thing. We open at nine on weekdays. We close at five every day. "
    "On Saturdays we are closed."
)


async def test_a_reply_has_at_most_two_tts_requests_in_flight_and_sends_their_context() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), CountingTts()
    tts.release.set()  # the greeting
    session = make_session(call, stt, GatedLlm(REPLY), tts)
    session.llm.go.set()
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    tts.release.clear()
    caller_says(stt, "When are you open?")
    await wait_for(lambda: len(tts.requests) == 3, "two sentences requested")
    for _ in range(20):
        await asyncio.sleep(0)
    assert tts.in_flight == 2 and len(tts.requests) == 3  # the third waits for a free slot
    tts.release.set()
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert tts.most_in_flight == 2
    sentences = [text for text, _ in tts.requests[1:]]
    assert sentences == split_sentences(REPLY) and len(sentences) == 4
    contexts = [context for _, context in tts.requests[1:]]
    assert contexts[0]["previous_text"] == ""
    assert contexts[2]["previous_text"] == " ".join(sentences[:2])
    # Waiting for its slot, the third sentence learned which one comes after it.
    assert contexts[2]["next_text"] == sentences[3]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_a_tts_error_that_cannot_heal_sends_the_rest_of_the_call_to_the_fallback() -> None:
    call, stt, fallback = MemoryCall(), PushedStt(), InstantTts()
    tts = CountingTts(ProviderError("ElevenLabs: HTTP 401: quota_exceeded", heals=False))
    llm = GatedLlm(REPLY)
    llm.go.set()
    session = make_session(call, stt, llm, tts, fallback_tts=fallback)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "When are you open?")
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert [text for text, _ in tts.requests] == ["Hello."]  # never asked again
    assert fallback.texts == ["Hello.", *split_sentences(REPLY)]
    assert session.provider_errors == ["tts: ElevenLabs: HTTP 401: quota_exceeded"]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class BrokenKeypadCall(MemoryCall):
    async def digits(self) -> AsyncIterator[str]:
        raise RuntimeError("keypad decoder crashed")
        yield ""


async def test_a_dead_worker_ends_the_call_loudly(caplog: pytest.LogCaptureFixture) -> None:
    call, stt = BrokenKeypadCall(), PushedStt()
    session = make_session(call, stt, GatedLlm("unused"), InstantTts())
    await asyncio.wait_for(session.run(), 5)  # returns: it does not go on without the worker
    assert call.ended.is_set()
    assert any(
        r.levelno == logging.ERROR and "keypad decoder crashed" in r.getMessage()
        for r in caplog.records
    )


class QueueingCall(MemoryCall):
    """Queues what is played; `send(ms)` puts that much of the queue on the "wire"."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = bytearray()
        self.sent = 0

    def play(self, mulaw: bytes) -> None:
        self.queue += mulaw

    def flush(self) -> int:
        dropped = len(self.queue)
        self.queue.clear()
        return dropped

    def send(self, ms: float) -> None:
        count = int(ms * 8)
        self.played += self.queue[:count]
        del self.queue[:count]
        self.sent += count

    @property
    def sent_audio_ms(self) -> float:
        return self.sent / 8

    @property
    def queued_ms(self) -> float:
        return len(self.queue) / 8

    async def drained(self) -> None:
        while self.queue and not self.ended.is_set():
            await asyncio.sleep(0)


class TextAudioTts:
    """Audio whose bytes say which text it is for: 100 ms per sentence."""

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        yield bytes([len(text) % 200 + 1]) * 800


async def test_after_a_hold_the_sentence_that_was_cut_is_said_again_from_its_start() -> None:
    call, stt = QueueingCall(), PushedStt()
    settings = ConversationSettings(greeting="Welcome to the clinic. We are open until five.")
    session = make_session(call, stt, GatedLlm("unused"), TextAudioTts(), settings=settings)
    runner = asyncio.create_task(session.run())
    _, second = split_sentences(settings.greeting)
    await wait_for(lambda: call.queued_ms == 200, "both sentences queued")
    call.send(150)  # the first sentence and half of the second went out
    call.set_hold(True)
    await wait_for(lambda: session.call.on_hold, "on hold")
    call.set_hold(False)
    await wait_for(lambda: call.queued_ms == 100, "the second sentence queued again")
    assert bytes(call.queue) == bytes([len(second) % 200 + 1]) * 800
    call.send(100)
    await wait_for(lambda: len(session.turns) == 1, "the greeting finished")
    assert session.turns[0].heard_text == settings.greeting
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class TimedTts(InstantTts):
    """InstantTts that also notes when each text was asked for (loop time)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked_at: dict[str, float] = {}

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.asked_at[text] = asyncio.get_running_loop().time()
        async for audio in super().synthesize(text, **context):
            yield audio


async def test_the_idle_timer_is_suspended_while_the_caller_has_us_on_hold() -> None:
    # Real time with a short timer; every check is a lower bound, so a slow machine can only
    # make this test weaker, never fail it.
    call, stt, tts = MemoryCall(), PushedStt(), TimedTts()
    settings = ConversationSettings(greeting="Hello.", idle_reprompt_seconds=0.2)
    session = make_session(call, stt, GatedLlm("unused"), tts, settings=settings)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    call.set_hold(True)
    await wait_for(lambda: call.holds.empty(), "the hold seen")
    await asyncio.sleep(0.6)  # three re-prompt intervals of hold music
    assert "Are you still there?" not in tts.texts
    back = asyncio.get_running_loop().time()
    call.set_hold(False)
    await wait_for(lambda: "Are you still there?" in tts.texts, "re-prompted after the hold")
    # The silence counts from the unhold, not from the greeting.
    assert tts.asked_at["Are you still there?"] - back >= 0.2 - 1e-6
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class RefusedStt(PushedStt):
    async def start(self) -> None:
        raise ProviderError("Deepgram: out of credit (HTTP 402: Project does not have enough)")


async def test_a_caller_the_stt_cannot_hear_is_told_so() -> None:
    call, stt, tts = MemoryCall(), RefusedStt(), InstantTts()
    session = make_session(call, stt, GatedLlm("unused"), tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    assert tts.texts == ["Hello.", *split_sentences(STT_LOST)]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_an_stt_that_gives_up_mid_call_is_announced() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    session = make_session(call, stt, GatedLlm("unused"), tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    stt.queue.put_nowait(SttEvent(SttEventKind.ERROR, detail="reconnecting: connection lost"))
    stt.queue.put_nowait(SttEvent(SttEventKind.ERROR, detail="gave up: Deepgram HTTP 402"))
    await wait_for(lambda: len(session.turns) == 2, "the notice said")
    assert tts.texts == ["Hello.", *split_sentences(STT_LOST)]
    call.ended.set()
    await asyncio.wait_for(runner, 5)


class HeldCallWithMusic(MemoryCall):
    """On hold from the start, the caller's PBX playing hold music to us."""

    def __init__(self) -> None:
        super().__init__()
        self.on_hold = True
        self.music_played = asyncio.Event()

    async def frames(self) -> AsyncIterator[bytes]:
        for _ in range(50):
            yield bytes(range(0, 160))  # loud, not silence
        self.music_played.set()
        await self.ended.wait()


class RecordingStt(PushedStt):
    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()

    def send_audio(self, mulaw: bytes) -> None:
        self.audio += mulaw


async def test_hold_music_is_not_taken_for_the_caller() -> None:
    call, stt = HeldCallWithMusic(), RecordingStt()
    session = make_session(call, stt, GatedLlm("unused"), InstantTts())
    runner = asyncio.create_task(session.run())
    await wait_for(call.music_played.is_set, "the hold music played")
    assert stt.audio == b"" and session.barge_in_events == []
    call.ended.set()
    await asyncio.wait_for(runner, 5)


async def test_a_long_reply_stays_within_a_two_request_plan_of_the_real_tts() -> None:
    # The real ElevenLabs provider against the fake on a Free plan (2 concurrent requests):
    # started all at once, the later sentences of this reply would get 429s and the offline
    # voice mid-reply.
    async with FakeElevenLabsServer(concurrency_limit=2) as server:
        tts = ElevenLabsTextToSpeech(
            api_key=server.api_key, voice_id="voice", base_url=server.base_url
        )
        call, stt, fallback = MemoryCall(), PushedStt(), InstantTts()
        llm = GatedLlm(REPLY)
        llm.go.set()
        session = make_session(call, stt, llm, tts, fallback_tts=fallback)
        runner = asyncio.create_task(session.run())
        try:
            await wait_for(lambda: len(session.turns) == 1, "the greeting said")
            caller_says(stt, "When are you open?")
            await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
        finally:
            call.ended.set()
            await asyncio.wait_for(runner, 5)
            await tts.aclose()
    assert [r.status for r in server.requests] == [200] * 5  # the greeting and 4 sentences
    assert fallback.texts == [] and session.provider_errors == []


# -- events on the call's bus -------------------------------------------------------------


async def test_turns_are_reported_once_their_timings_are_final() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    llm = GatedLlm("Tuesday works.")
    llm.go.set()
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "Is Tuesday free?")
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    completed = [e for e in call.emitted if isinstance(e, TurnCompleted)]
    assert [(e.index, e.role) for e in completed] == [
        (0, "assistant"),
        (1, "user"),
        (2, "assistant"),
    ]
    assert all(e.turn is session.turns[e.index] and e.call_id == call.call_id for e in completed)
    # the reply's first packet went out before it was reported: its voice-to-voice is known
    assert completed[2].turn.timings.first_reply_packet is not None


async def test_provider_failures_are_reported_with_a_typed_stage() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    session = make_session(call, stt, FailingOnceLlm("Tuesday works."), tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "Is Tuesday free?")
    await wait_for(lambda: "Tuesday works." in tts.texts, "the retried reply spoken")
    stt.queue.put_nowait(SttEvent(SttEventKind.ERROR, detail="reconnecting: connection lost"))
    await wait_for(lambda: len(session.failures.recent) == 2, "the STT error noted")
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    failures = [e for e in call.emitted if isinstance(e, ProviderFailure)]
    assert [(f.stage, f.message, f.gave_up) for f in failures] == [
        (ProviderStage.LLM, "OpenAI: HTTP 500", False),
        (ProviderStage.STT, "reconnecting: connection lost", False),
    ]
    assert list(session.failures.recent) == failures


async def test_barge_ins_are_reported() -> None:
    call, stt, tts = MemoryCall(), PushedStt(), GatedTts()
    session = make_session(call, stt, GatedLlm("unused"), tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: session.state == "speaking", "the greeting audible")
    stt.queue.put_nowait(SttEvent(SttEventKind.PARTIAL, "wait, I need Thursday instead"))
    await wait_for(lambda: session.state != "speaking", "the greeting interrupted")
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    [barge_in] = [e for e in call.emitted if isinstance(e, BargeIn)]
    assert barge_in.action == BargeInAction.INTERRUPT and barge_in.call_id == call.call_id
    assert session.barge_in_events[-1].action == BargeInAction.INTERRUPT


async def test_an_observer_that_raises_never_reaches_the_call(caplog) -> None:
    call, stt, tts = MemoryCall(), PushedStt(), InstantTts()
    llm = GatedLlm("Tuesday works.")
    llm.go.set()

    def broken(event: object) -> None:
        raise RuntimeError("observer bug")

    call.events.subscribe(broken)
    session = make_session(call, stt, llm, tts)
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    caller_says(stt, "Is Tuesday free?")
    await wait_for(lambda: len(session.turns) == 3, "the reply recorded")
    assert tts.texts == ["Hello.", "Tuesday works."]
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1


async def test_a_reply_waits_for_its_pending_stamps_before_its_timings_are_final() -> None:
    reply = Reply(0.0, TurnTimings(), 0)
    landed = asyncio.Event()

    async def first_packet() -> None:
        await landed.wait()
        reply.timings.first_reply_packet = 1.5

    reply.stamp_pending(asyncio.create_task(first_packet()))
    final: list[float | None] = []
    reply.when_timings_final(lambda: final.append(reply.timings.first_reply_packet))
    await asyncio.sleep(0)
    assert final == []
    landed.set()
    await wait_for(lambda: bool(final), "the stamp landed")
    assert final == [1.5]
    # nothing pending: at once
    Reply(0.0, TurnTimings(), 0).when_timings_final(lambda: final.append(None))
    assert final == [1.5, None]
