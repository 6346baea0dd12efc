"""One call's conversation: caller audio -> STT -> LLM (+ tools) -> sentences -> TTS -> RTP.

Everything streams: the first sentence of a reply is synthesised while the LLM is still
writing the second, and the next sentence's TTS runs while the current one plays (at most
those two requests per reply, and a process-wide cap). Barge-in pauses the line on voice and
flushes it on words (see barge_in.py). Failures are spoken around: an LLM error gets an
apology and one retry (after the service's retry-after, if it gave one), a second failure the
fallback line; a TTS error falls back to the offline voice for that sentence, or for the rest
of the call when the error cannot heal; the STT provider reconnects by itself. A hold (the
caller's re-INVITE) suspends the idle timer, and on unhold the sentence that was cut is said
again from its start.

The history sent to the LLM stays valid on every path: a tool round answers each of its
tool_call ids at once (with "interrupted before completion" until the tool's real result
replaces it), and a tool still running when the caller interrupts is finished and its result
kept, so a booking that committed is never forgotten.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import webrtcvad

from sipagent.apps.base import CallChannel
from sipagent.conversation.barge_in import (
    BargeInAction,
    BargeInEvent,
    BargeInPolicy,
    BargeInSettings,
    is_backchannel,
)
from sipagent.conversation.chunker import SentenceChunker
from sipagent.conversation.heard import SpokenChunk, first_unheard_chunk, heard_text
from sipagent.conversation.idle import IdleAction, IdlePolicy
from sipagent.conversation.tts_slots import TtsSlots
from sipagent.providers.base import (
    LanguageModel,
    ProviderError,
    SpeechToText,
    SttEventKind,
    TextToSpeech,
    ToolCall,
    WarmsUp,
)
from sipagent.tools.receptionist import TOOL_SCHEMAS, ReceptionistTools

log = logging.getLogger("sipagent.conversation")

SYSTEM_PROMPT = """You are {persona}, the receptionist of {clinic}, answering the phone.
Speak naturally in 1-2 short sentences per reply; this is a phone call, so no lists, no
markdown, no emojis. Help callers book appointments: collect the patient's full name, phone
number, preferred date and time, and the reason (cleaning, checkup, emergency or
consultation), then call book_appointment and read the booking back. Use check_availability
before offering times. If a tool returns an error, explain it simply and offer alternatives.
Text like "(keypad) 5551234567" is what the caller typed on the keypad. If the caller asks for
a person, call transfer_to_human. When the caller is done, say goodbye and call end_call.
Today is {today}. Tool arguments take dates as YYYY-MM-DD and times as 24-hour HH:MM, in the
clinic's time zone."""

APOLOGY = "Sorry, just one moment."
LLM_FALLBACK = (
    "I'm sorry, I'm having trouble right now. Please stay on the line or call back in a few "
    "minutes, and we'll get you booked."
)
STT_LOST = (
    "I'm sorry, I can't hear you right now. You can type your phone number on the keypad, "
    "or please call us back in a few minutes."
)
# What an open tool_call id is answered with until its tool finishes (or if it never does).
TOOL_INTERRUPTED = json.dumps({"ok": False, "error": "interrupted before completion"})
# Sentences of one reply synthesised at once: the one playing and the next.
TTS_REQUESTS_PER_REPLY = 2


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    persona: str = "Sarah"
    clinic: str = "Sunrise Dental"
    greeting: str = "Thank you for calling Sunrise Dental, this is Sarah. How can I help you?"
    barge_in: BargeInSettings = field(default_factory=BargeInSettings)
    vad_mode: int = 2
    min_chunk_chars: int = 20
    first_chunk_min_chars: int = 1  # the reply's first sentence goes to TTS however short
    idle_reprompt_seconds: float = 8.0
    idle_max_reprompts: int = 2
    max_call_seconds: float = 900.0
    dtmf_interdigit_seconds: float = 2.0
    max_tool_rounds: int = 3
    transfer_uri: str = ""
    # A 429's retry-after longer than this is not waited for: the fallback line is said instead.
    max_retry_after_seconds: float = 3.0
    watchdog_interval: float = 0.25


@dataclass(slots=True)
class TurnTimings:
    """loop.time() stamps of one exchange; None where the stage did not happen."""

    caller_speech_end: float | None = None  # last voiced inbound frame
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_byte: float | None = None
    first_reply_packet: float | None = None  # first outbound RTP packet of the reply
    barge_in_onset: float | None = None
    barge_in_decision: float | None = None
    last_voiced_packet: float | None = None  # after a barge-in: when the line went quiet

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str
    heard_text: str | None = None
    interrupted: bool = False
    timings: TurnTimings = field(default_factory=TurnTimings)
    at: float = field(default_factory=time.time)


class _Reply:
    """The reply being spoken: its chunks (for heard-text) and its playout baseline."""

    def __init__(self, baseline_sent_ms: float, timings: TurnTimings, message_index: int) -> None:
        self.baseline_sent_ms = baseline_sent_ms
        self.message_index = message_index  # where this reply's messages start in history
        self.timings = timings
        self.chunks: list[SpokenChunk] = []
        self.text = ""
        self.started_speaking = False
        self.tts_requests = asyncio.Semaphore(TTS_REQUESTS_PER_REPLY)


class ConversationSession:
    def __init__(
        self,
        call: CallChannel,
        *,
        stt: SpeechToText,
        llm: LanguageModel,
        tts: TextToSpeech,
        tools: ReceptionistTools,
        settings: ConversationSettings | None = None,
        fallback_tts: TextToSpeech | None = None,
        transfer: Callable[[str], Awaitable[bool]] | None = None,
        on_turn: Callable[[int, Turn], None] | None = None,
        today: str = "",
        clock: Callable[[], float] | None = None,
        tts_slots: TtsSlots | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.call = call
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.tools = tools
        self.settings = settings or ConversationSettings()
        self.transfer = transfer
        self.on_turn = on_turn
        self.clock = clock or asyncio.get_running_loop().time
        self.tts_slots = tts_slots  # process-wide TTS concurrency (None: unbounded)
        self.sleep = sleep
        self.messages: list[dict[str, Any]] = [
            {
                "role": "system",
                "content": SYSTEM_PROMPT.format(
                    persona=self.settings.persona, clinic=self.settings.clinic, today=today
                ),
            }
        ]
        self.turns: list[Turn] = []
        self.barge_in = BargeInPolicy(self.settings.barge_in)
        self.barge_in_events: list[BargeInEvent] = []
        self.provider_errors: list[str] = []
        # Providers that failed in a way that cannot heal: not asked again during this call.
        self.given_up: set[str] = set()
        self.state = "listening"
        self._vad = webrtcvad.Vad(self.settings.vad_mode)
        self._pending_finals: list[str] = []
        self._last_caller_voice: float | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._reply: _Reply | None = None
        # Turns wait here for on_turn while a reply is being prepared: persisting one (SQL in a
        # worker thread) holds the GIL for ~3 ms, which would land on the LLM request.
        self._turns_to_record: list[int] = []
        self._holding_records = False
        # Tool rounds still running (a booking waiting on the database): a later reply waits
        # for them so the model learns their real outcome.
        self._tool_rounds: set[asyncio.Task[str | None]] = set()
        self._done = asyncio.Event()
        self.idle = IdlePolicy(
            self.clock(),
            reprompt_after=self.settings.idle_reprompt_seconds,
            max_reprompts=self.settings.idle_max_reprompts,
            max_call=self.settings.max_call_seconds,
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        greeting = self.settings.greeting
        try:
            await self.stt.start()
        except ProviderError as error:
            self._provider_error("stt", error)
            greeting = f"{greeting} {STT_LOST}"  # the caller must not talk into the void
        try:
            # A worker that dies takes the group down: the call ends, loudly, instead of going
            # on deaf (no audio pump) or without its time limit (no watchdog).
            async with asyncio.TaskGroup() as workers:
                if isinstance(self.llm, WarmsUp):
                    # The LLM's connection opens while the greeting plays, not on the caller's
                    # first turn (the greeting's own TTS request opens the TTS connection).
                    workers.create_task(self.llm.warm_up(), name="llm warm-up")
                for worker in (
                    self._pump_audio, self._consume_transcripts, self._consume_digits,
                    self._watchdog, self._follow_hold,
                ):  # fmt: skip
                    workers.create_task(worker(), name=worker.__name__.strip("_"))
                self._start_reply(None, greeting=greeting)
                await self._done.wait()
                raise _CallOver
        except* _CallOver:
            pass
        except* Exception as failed:
            for error in failed.exceptions:
                log.error(
                    "[%s] conversation worker failed, ending the call: %s: %s",
                    self.call.call_id, type(error).__name__, error, exc_info=error,
                )  # fmt: skip
            await self.call.hangup("internal error")
        finally:
            await self._cancel_reply()
            await self._settle_tool_rounds(timeout=5.0)
            self._release_records()
            try:
                await asyncio.wait_for(self.stt.close(), 2.0)
            except Exception as error:
                log.warning("[%s] closing the STT failed: %r", self.call.call_id, error)

    def _end(self) -> None:
        self._done.set()

    async def say_and_wait(self, text: str) -> None:
        """Interrupt whatever is going on, say `text`, and return once it has been played."""
        self._start_reply(None, greeting=text)
        task = self._reply_task
        if task is not None:
            await asyncio.wait({task})  # its failures are logged by the reply itself

    # -- caller audio -----------------------------------------------------------------------
    async def _pump_audio(self) -> None:
        async for frame in self.call.frames():
            now = self.clock()
            if self.call.on_hold:
                continue  # music or silence from the caller's PBX is not the caller talking
            try:
                voiced = self._vad.is_speech(audioop.ulaw2lin(frame, 2), 8000)
            except Exception as error:  # a frame webrtcvad cannot take counts as silence
                log.debug("[%s] VAD refused a frame: %r", self.call.call_id, error)
                voiced = False
            if voiced:
                self._last_caller_voice = now
                self.idle.caller_active(now)
            try:
                self.stt.send_audio(frame)
                self._apply_barge_in(self.barge_in.on_frame(voiced, now))
            except Exception:  # one bad frame must not stop the caller being heard
                log.exception("[%s] caller audio handling failed", self.call.call_id)
        self._end()  # the call ended

    def _apply_barge_in(self, event: BargeInEvent) -> None:
        if event.action == BargeInAction.NONE:
            return
        self.barge_in_events.append(event)
        if event.action == BargeInAction.PAUSE:
            self.call.pause()
        elif event.action == BargeInAction.RESUME:
            self.call.resume()
        elif event.action == BargeInAction.INTERRUPT:
            reply = self._reply
            if reply is not None:
                reply.timings.barge_in_onset = event.caller_onset
                reply.timings.barge_in_decision = event.at
            log.info("[%s] barge-in: %r", self.call.call_id, event.transcript)
            self._interrupt_reply()

    # -- transcripts ------------------------------------------------------------------------
    async def _consume_transcripts(self) -> None:
        async for event in self.stt.events():
            now = self.clock()
            if event.kind == SttEventKind.PARTIAL:
                self._apply_barge_in(self.barge_in.on_transcript(event.text, now))
            elif event.kind == SttEventKind.FINAL:
                if event.text.strip():
                    self._pending_finals.append(event.text.strip())
                    self._apply_barge_in(self.barge_in.on_transcript(event.text, now))
                if event.speech_final:
                    self._end_of_caller_turn(now)
            elif event.kind == SttEventKind.UTTERANCE_END:
                self._end_of_caller_turn(now)
            elif event.kind == SttEventKind.ERROR:
                self.provider_errors.append(f"stt: {event.detail}")
                log.warning("[%s] STT: %s", self.call.call_id, event.detail)
                if event.detail.startswith("gave up"):
                    self._start_reply(None, greeting=STT_LOST)

    def _end_of_caller_turn(self, now: float) -> None:
        text = " ".join(self._pending_finals).strip()
        self._pending_finals.clear()
        if not text:
            return
        speaking = self._reply_task is not None and not self._reply_task.done()
        if speaking and is_backchannel(text):
            return  # "mhm" while we talk is not a turn
        timings = TurnTimings(caller_speech_end=self._last_caller_voice, stt_final=now)
        self.idle.caller_active(now)
        self._start_reply(text, timings=timings)

    # -- keypad -----------------------------------------------------------------------------
    async def _consume_digits(self) -> None:
        digits = ""
        iterator = self.call.digits().__aiter__()
        # Never cancel a pending __anext__ (that would close the generator): wait on it instead.
        next_digit = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                timeout = self.settings.dtmf_interdigit_seconds if digits else None
                done, _ = await asyncio.wait({next_digit}, timeout=timeout)
                if not done:
                    self._keypad_entry(digits)
                    digits = ""
                    continue
                try:
                    digit = next_digit.result()
                except StopAsyncIteration:
                    return
                next_digit = asyncio.ensure_future(anext(iterator))
                self.idle.caller_active(self.clock())
                if digit == "#":
                    self._keypad_entry(digits)
                    digits = ""
                else:
                    digits += digit
        finally:
            next_digit.cancel()

    def _keypad_entry(self, digits: str) -> None:
        if not digits:
            return
        if digits == "0":
            self._start_reply(None, forced_tool=ToolCall("keypad_0", "transfer_to_human", "{}"))
            return
        self._start_reply(f"(keypad) {digits}", timings=TurnTimings(stt_final=self.clock()))

    # -- idle and call length ---------------------------------------------------------------
    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watchdog_interval)
            now = self.clock()
            busy = self._reply_task is not None and not self._reply_task.done()
            if busy or self._pending_finals or self.call.on_hold:
                # On hold the caller is away on purpose: no "Are you still there?" meanwhile.
                self.idle.agent_active(now)
            action = self.idle.tick(now)
            if action == IdleAction.REPROMPT:
                self._start_reply(None, greeting="Are you still there?")
            elif action == IdleAction.HANG_UP:
                self._start_reply(
                    None, greeting="I haven't heard anything, so I'll hang up now. Goodbye!",
                    then_hangup=True,
                )  # fmt: skip
                return
            elif action == IdleAction.TIME_LIMIT:
                self._start_reply(
                    None,
                    greeting="I'm sorry, we've reached the time limit for this call. "
                    "Please call back if you need anything else. Goodbye!",
                    then_hangup=True,
                )
                return

    # -- hold -------------------------------------------------------------------------------
    async def _follow_hold(self) -> None:
        async for held in self.call.hold_changes():
            # While held the media layer sends nothing and keeps the queue (RtpSession).
            log.info("[%s] caller %s", self.call.call_id, "put us on hold" if held else "is back")
            if not held:
                self.idle.caller_active(self.clock())
                self._say_again_what_was_cut()

    def _say_again_what_was_cut(self) -> None:
        """After a hold: the reply's audio still queued starts again from the beginning of the
        sentence the hold cut, so the caller hears whole sentences and nothing is skipped."""
        reply = self._reply
        if reply is None or self.call.queued_ms <= 0:
            return  # nothing was waiting to be said
        played_ms = self.call.sent_audio_ms - reply.baseline_sent_ms
        start = first_unheard_chunk(reply.chunks, played_ms)
        if start is None:
            return
        again = b"".join(bytes(chunk.audio) for chunk in reply.chunks[start:])
        self.call.flush()
        # heard_text() counts from the baseline: the replay starts at this chunk's offset.
        reply.baseline_sent_ms = self.call.sent_audio_ms - sum(
            chunk.audio_ms for chunk in reply.chunks[:start]
        )
        if again:
            self.call.play(again)

    # -- replies ----------------------------------------------------------------------------
    def _start_reply(
        self,
        user_text: str | None,
        *,
        timings: TurnTimings | None = None,
        greeting: str | None = None,
        forced_tool: ToolCall | None = None,
        then_hangup: bool = False,
    ) -> None:
        if user_text is not None:
            self._holding_records = True  # until the reply speaks (see _release_records)
        # A new turn while we speak: stop talking first, keeping what was heard in history.
        self._interrupt_reply()
        timings = timings or TurnTimings()
        if user_text is not None:
            log.info("[%s] caller: %s", self.call.call_id, user_text)
            self.messages.append({"role": "user", "content": user_text})
            self._add_turn(Turn("user", user_text, timings=timings))
        reply = _Reply(self.call.sent_audio_ms, timings, len(self.messages))
        self._reply = reply
        self.state = "thinking"
        self._reply_task = asyncio.get_running_loop().create_task(
            self._run_reply(reply, greeting, forced_tool, then_hangup)
        )

    async def _run_reply(
        self,
        reply: _Reply,
        fixed_text: str | None,
        forced_tool: ToolCall | None,
        then_hangup: bool,
    ) -> None:
        action: str | None = None
        try:
            if fixed_text is not None:
                await self._speak_text(fixed_text, reply)
                self.messages.append({"role": "assistant", "content": fixed_text})
            elif forced_tool is not None:
                action = await self._run_tools((forced_tool,), "")
                if action is not None:
                    action = await self._respond(reply) or action
            else:
                action = await self._respond(reply)
            await self._wait_played()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not a provider failure (those are spoken around below)
            log.exception("[%s] reply failed", self.call.call_id)
        finally:
            if self._reply is reply:  # an interrupted reply must not touch its successor
                self.barge_in.set_agent_speaking(False)
                self.state = "listening"
                self.idle.agent_active(self.clock())
                self._release_records()
        self._record_assistant(reply, interrupted=False)
        if then_hangup or action == "hangup":
            await self.call.hangup("agent ended the call")
            self._end()
        elif action == "transfer":
            await self._transfer()

    async def _respond(self, reply: _Reply) -> str | None:
        """LLM rounds until it stops calling tools; returns a call action if any."""
        action: str | None = None
        await self._settle_tool_rounds()
        for _ in range(self.settings.max_tool_rounds):
            text, tool_calls = await self._stream_llm_with_retry(reply)
            if not tool_calls:
                if text:
                    self.messages.append({"role": "assistant", "content": text})
                return action
            action = await self._run_tools(tool_calls, text) or action
            if action is not None:
                # Let the model say its goodbye/transfer line from the tool result, once.
                text, _ = await self._stream_llm_with_retry(reply)
                if text:
                    self.messages.append({"role": "assistant", "content": text})
                return action
        return action

    async def _run_tools(self, tool_calls: tuple[ToolCall, ...], text: str) -> str | None:
        """Run one round of tool calls. Every id is answered in the history at once, so the
        history is valid whenever this reply is cancelled; each answer is replaced in place by
        the tool's result. The round runs on if the reply is cancelled (a booking is not
        abandoned half way), and the next reply waits for it (see _settle_tool_rounds)."""
        answers = [
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_INTERRUPTED}
            for call in tool_calls
        ]
        self.messages.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in tool_calls
                ],
            }
        )
        self.messages.extend(answers)
        round_task = asyncio.get_running_loop().create_task(
            self._execute_tools(tool_calls, answers), name="tool round"
        )
        self._tool_rounds.add(round_task)
        round_task.add_done_callback(self._tool_rounds.discard)
        return await asyncio.shield(round_task)

    async def _execute_tools(
        self, tool_calls: tuple[ToolCall, ...], answers: list[dict[str, Any]]
    ) -> str | None:
        action = None
        for tool_call, answer in zip(tool_calls, answers, strict=True):
            outcome = await self.tools.execute(tool_call, self.call.call_id)
            log.info("[%s] tool %s -> %s", self.call.call_id, tool_call.name, outcome.content[:200])
            answer["content"] = outcome.content
            action = outcome.action or action
        return action

    async def _settle_tool_rounds(self, timeout: float | None = None) -> None:
        """Wait for tool rounds an interruption left running, so their results are in the
        history before the next request (a booking that committed is never forgotten)."""
        if not self._tool_rounds:
            return
        done, pending = await asyncio.wait(set(self._tool_rounds), timeout=timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("[%s] a tool round failed: %r", self.call.call_id, task.exception())
        if pending:
            log.warning("[%s] %d tool round(s) still running", self.call.call_id, len(pending))

    async def _stream_llm_with_retry(self, reply: _Reply) -> tuple[str, tuple[ToolCall, ...]]:
        """The model's reply, or after a failure an apology and one retry; whatever fails, the
        caller hears something (the fallback line), and each failure is one log line."""
        for attempt in range(2):
            if "llm" in self.given_up:
                break
            chunks_before = len(reply.chunks)
            try:
                return await self._stream_llm(reply)
            except ProviderError as error:
                self._provider_error("llm", error)
                wait = error.retry_after or 0.0
                retry = (
                    attempt == 0
                    and error.heals
                    # Words of this attempt already spoken: do not start over mid-reply.
                    and len(reply.chunks) == chunks_before
                    and wait <= self.settings.max_retry_after_seconds
                )
                if not retry:
                    break
                # The apology plays while the service's retry-after runs out.
                await asyncio.gather(self._speak_text(APOLOGY, reply), self.sleep(wait))
        await self._speak_text(LLM_FALLBACK, reply)
        return "", ()

    async def _stream_llm(self, reply: _Reply) -> tuple[str, tuple[ToolCall, ...]]:
        chunker = SentenceChunker(
            min_chars=self.settings.min_chunk_chars,
            first_min_chars=self.settings.first_chunk_min_chars,
        )
        speaker = _Speaker(self, reply)
        text = ""
        tool_calls: tuple[ToolCall, ...] = ()
        try:
            async with contextlib.aclosing(self.llm.stream(self.messages, TOOL_SCHEMAS)) as stream:
                async for chunk in stream:
                    if reply.timings.llm_first_token is None:
                        reply.timings.llm_first_token = self.clock()
                    if chunk.text:
                        text += chunk.text
                        for sentence in chunker.feed(chunk.text):
                            speaker.say(sentence)
                    if chunk.tool_calls:
                        tool_calls = chunk.tool_calls
            for sentence in chunker.flush():
                speaker.say(sentence)
            await speaker.finish()
        finally:
            await speaker.close()
        reply.text = f"{reply.text} {text.strip()}".strip()
        return text.strip(), tool_calls

    async def _speak_text(self, text: str, reply: _Reply) -> None:
        speaker = _Speaker(self, reply)
        chunker = SentenceChunker(min_chars=1)
        try:
            for sentence in chunker.feed(text) + chunker.flush():
                speaker.say(sentence)
            await speaker.finish()
        finally:
            await speaker.close()
        reply.text = f"{reply.text} {text}".strip()

    def _audio_started(self, reply: _Reply) -> None:
        if not reply.started_speaking:
            reply.started_speaking = True
            self.state = "speaking"
            self.barge_in.set_agent_speaking(True)

    async def _wait_played(self) -> None:
        while self.call.queued_ms > 0:
            await asyncio.sleep(0.02)
        reply = self._reply
        if reply is not None and reply.timings.first_reply_packet is None:
            reply.timings.first_reply_packet = _session_time(self.call, "talkspurt_started_at")

    # -- interruption -----------------------------------------------------------------------
    def _interrupt_reply(self) -> None:
        """Stop the reply being spoken, now: flush the line, cancel its LLM/TTS streams, and
        record what the caller heard (the audio count is exact at this moment)."""
        task, reply = self._reply_task, self._reply
        if task is None or task.done() or task is asyncio.current_task():
            return
        self.call.flush()
        task.cancel()
        self._reply_task = None
        self._reply = None
        self.barge_in.set_agent_speaking(False)
        self.state = "listening"
        if reply is not None:
            reply.timings.last_voiced_packet = _session_time(self.call, "last_voiced_sent_at")
            self._record_assistant(reply, interrupted=True)

    async def _cancel_reply(self) -> None:
        """At the end of the call: stop whatever is still being said."""
        task = self._reply_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait({task})  # it logs its own failures

    def _record_assistant(self, reply: _Reply, *, interrupted: bool) -> None:
        if any(turn.timings is reply.timings for turn in self.turns if turn.role == "assistant"):
            return
        played_ms = self.call.sent_audio_ms - reply.baseline_sent_ms
        heard = heard_text(reply.chunks, played_ms) if interrupted else reply.text.strip()
        if interrupted:
            self._replace_reply_history(reply, heard)
        if reply.text.strip() or heard:
            log.info(
                "[%s] agent%s: %s", self.call.call_id, " (interrupted)" if interrupted else "",
                heard if interrupted else reply.text.strip(),
            )  # fmt: skip
            self._add_turn(Turn("assistant", reply.text.strip(), heard, interrupted, reply.timings))

    def _add_turn(self, turn: Turn) -> None:
        self.turns.append(turn)
        self._turns_to_record.append(len(self.turns) - 1)
        if not self._holding_records:
            self._release_records()

    def _release_records(self) -> None:
        """Hand the turns held back so far to on_turn, in order."""
        self._holding_records = False
        pending, self._turns_to_record = self._turns_to_record, []
        if self.on_turn is None:
            return
        for index in pending:
            try:
                self.on_turn(index, self.turns[index])
            except Exception:  # persistence trouble never reaches the caller
                log.exception("[%s] recording a turn failed", self.call.call_id)

    def _replace_reply_history(self, reply: _Reply, heard: str) -> None:
        """History keeps only what the caller heard of an interrupted reply, marked, so the
        model does not assume the rest was said; tool calls and results stay, and the caller's
        new words come after it."""
        tail = self.messages[reply.message_index :]
        tool_related = [m for m in tail if m["role"] == "tool" or m.get("tool_calls")]
        callers = [m for m in tail if m["role"] == "user"]
        interrupted = {
            "role": "assistant",
            "content": f"{heard} [interrupted by the caller]".strip(),
        }
        self.messages[reply.message_index :] = [*tool_related, interrupted, *callers]

    async def _transfer(self) -> None:
        target = self.settings.transfer_uri
        if target and self.transfer is not None and await self.transfer(target):
            self._end()
            return
        self._start_reply(
            None,
            greeting="I'm sorry, I couldn't reach the front desk right now. I can have someone "
            "call you back. What's the best number to reach you?",
        )

    def _provider_error(self, stage: str, error: Exception) -> None:
        """One concise line per failure: the service's own words, no traceback."""
        self.provider_errors.append(f"{stage}: {error}")
        gives_up = isinstance(error, ProviderError) and not error.heals
        if gives_up:
            self.given_up.add(stage)
        log.warning(
            "[%s] %s provider failed: %s%s", self.call.call_id, stage, error,
            " (not used again on this call)" if gives_up else "",
        )  # fmt: skip


class _CallOver(Exception):
    """Raised inside the worker group once the call is over, to stop the workers."""


def _session_time(call: CallChannel, name: str) -> float | None:
    session = getattr(call, "session", None)
    return getattr(session, name, None) if session is not None else None


class _Speaker:
    """Speaks sentences in order with pipelined TTS: a sentence's synthesis starts as soon as
    it is known and a request slot is free (two per reply: the sentence playing and the next;
    and the process-wide TtsSlots); audio is queued for playout in sentence order, as it
    arrives."""

    def __init__(self, session: ConversationSession, reply: _Reply) -> None:
        self.session = session
        self.reply = reply
        self._sentences: asyncio.Queue[tuple[SpokenChunk, asyncio.Queue[bytes | None]] | None] = (
            asyncio.Queue()
        )
        self._synth_tasks: list[asyncio.Task[None]] = []
        self._first_packet_watch: asyncio.Task[None] | None = None
        self._player = asyncio.get_running_loop().create_task(self._play())

    def say(self, sentence: str) -> None:
        chunk = SpokenChunk(sentence)
        self.reply.chunks.append(chunk)
        audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._synth_tasks.append(
            asyncio.get_running_loop().create_task(self._synthesize(chunk, audio))
        )
        self._sentences.put_nowait((chunk, audio))

    async def finish(self) -> None:
        self._sentences.put_nowait(None)
        await self._player

    async def close(self) -> None:
        for task in (*self._synth_tasks, self._player):
            if not task.done():
                task.cancel()
        tasks = (*self._synth_tasks, self._player)
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("[%s] speaking failed: %r", self.session.call.call_id, task.exception())

    async def _synthesize(self, chunk: SpokenChunk, audio: asyncio.Queue[bytes | None]) -> None:
        session, reply = self.session, self.reply
        try:
            async with reply.tts_requests:
                if "tts" not in session.given_up and await self._speak_with(
                    "tts", session.tts, chunk, audio, first_sentence=reply.chunks[0] is chunk
                ):
                    return
                if session.fallback_tts is not None:
                    await self._speak_with("fallback tts", session.fallback_tts, chunk, audio)
        finally:
            audio.put_nowait(None)

    async def _speak_with(
        self,
        stage: str,
        tts: TextToSpeech,
        chunk: SpokenChunk,
        audio: asyncio.Queue[bytes | None],
        *,
        first_sentence: bool = False,
    ) -> bool:
        """Synthesise `chunk` with `tts` into `audio`; False if it failed before any audio (so
        another voice can say the sentence whole)."""
        chunks = self.reply.chunks
        index = next(i for i, said in enumerate(chunks) if said is chunk)
        context = {
            # What was said just before, and (when already known) what comes next.
            "previous_text": " ".join(c.text for c in chunks[:index])[-500:],
            "next_text": chunks[index + 1].text if index + 1 < len(chunks) else "",
        }
        slots = self.session.tts_slots if stage == "tts" else None
        produced = failed = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                if slots is not None:
                    await stack.enter_async_context(slots.slot(first_sentence=first_sentence))
                stream = tts.synthesize(chunk.text, **context)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for data in stream:
                        produced = True
                        audio.put_nowait(data)
        except ProviderError as error:
            self.session._provider_error(stage, error)
            failed = True
        return produced or not failed

    async def _play(self) -> None:
        session, reply = self.session, self.reply
        while (item := await self._sentences.get()) is not None:
            chunk, audio = item
            while (data := await audio.get()) is not None:
                if session._reply is not reply:
                    # Interrupted: the line was flushed before this task was cancelled, and
                    # nothing of this reply may follow the flush (play may send it at once).
                    return
                if reply.timings.tts_first_byte is None:
                    reply.timings.tts_first_byte = session.clock()
                chunk.audio_ms += len(data) / 8  # mu-law: 8 bytes per ms
                chunk.audio += data
                first = not reply.started_speaking
                before = _session_time(session.call, "talkspurt_started_at")
                session._audio_started(reply)
                session.call.play(data)
                if first:
                    self._note_first_packet(before)
                    session._release_records()  # after play: not on the first frame's path

    def _note_first_packet(self, before: float | None) -> None:
        """Record the wire time of the reply's first RTP packet: at once if play() sent it
        (a talkspurt on a quiet line), else when the media tick has."""
        timings = self.reply.timings
        sent = _session_time(self.session.call, "talkspurt_started_at")
        if sent is not None and sent != before:
            timings.first_reply_packet = sent
            return
        self._first_packet_watch = asyncio.get_running_loop().create_task(
            self._watch_first_packet(before)
        )

    async def _watch_first_packet(self, before: float | None) -> None:
        timings = self.reply.timings
        for _ in range(25):
            await asyncio.sleep(0.02)
            sent = _session_time(self.session.call, "talkspurt_started_at")
            if sent is not None and sent != before:
                if timings.first_reply_packet is None:
                    timings.first_reply_packet = sent
                return
