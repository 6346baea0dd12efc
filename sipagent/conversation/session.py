"""One call's conversation: caller audio -> STT -> LLM (+ tools) -> sentences -> TTS -> RTP.

Everything streams: the first sentence of a reply is synthesised while the LLM is still
writing the second, and the next sentence's TTS runs while the current one plays. Barge-in
pauses the line on voice and flushes it on words (see barge_in.py). Failures are spoken
around: an LLM error gets an apology and one retry, a TTS error falls back to the offline
voice for that sentence, the STT provider reconnects by itself.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
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
from sipagent.conversation.heard import SpokenChunk, heard_text
from sipagent.conversation.idle import IdleAction, IdlePolicy
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
Today is {today}."""


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
        self._done = asyncio.Event()
        self.idle = IdlePolicy(
            self.clock(),
            reprompt_after=self.settings.idle_reprompt_seconds,
            max_reprompts=self.settings.idle_max_reprompts,
            max_call=self.settings.max_call_seconds,
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self.stt.start()
        except ProviderError as error:
            self._provider_error("stt", error)
        workers = [
            # The LLM's connection opens while the greeting plays, not on the caller's first
            # turn (the greeting's own TTS request opens the TTS connection).
            *([asyncio.create_task(self.llm.warm_up())] if isinstance(self.llm, WarmsUp) else []),
            asyncio.create_task(self._pump_audio()),
            asyncio.create_task(self._consume_transcripts()),
            asyncio.create_task(self._consume_digits()),
            asyncio.create_task(self._watchdog()),
        ]
        self._start_reply(None, greeting=self.settings.greeting)
        try:
            await self._done.wait()
        finally:
            for worker in workers:
                worker.cancel()
            await self._cancel_reply()
            self._release_records()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stt.close(), 2.0)

    def _end(self) -> None:
        self._done.set()

    async def say_and_wait(self, text: str) -> None:
        """Interrupt whatever is going on, say `text`, and return once it has been played."""
        self._start_reply(None, greeting=text)
        task = self._reply_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- caller audio -----------------------------------------------------------------------
    async def _pump_audio(self) -> None:
        async for frame in self.call.frames():
            now = self.clock()
            try:
                voiced = self._vad.is_speech(audioop.ulaw2lin(frame, 2), 8000)
            except Exception:
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
                log.warning("STT: %s", event.detail)

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
            await asyncio.sleep(0.25)
            now = self.clock()
            busy = self._reply_task is not None and not self._reply_task.done()
            if busy or self._pending_finals:
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
        except Exception:
            log.exception("reply failed")
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
        action = None
        for tool_call in tool_calls:
            outcome = await self.tools.execute(tool_call, self.call.call_id)
            log.info("tool %s -> %s", tool_call.name, outcome.content[:200])
            self.messages.append(
                {"role": "tool", "tool_call_id": tool_call.id, "content": outcome.content}
            )
            action = outcome.action or action
        return action

    async def _stream_llm_with_retry(self, reply: _Reply) -> tuple[str, tuple[ToolCall, ...]]:
        for attempt in range(2):
            try:
                return await self._stream_llm(reply)
            except ProviderError as error:
                self._provider_error("llm", error)
                if reply.text:
                    raise  # words already spoken: do not start over mid-sentence
                if attempt == 0:
                    await self._speak_text("Sorry, just one moment.", reply)
                    continue
                await self._speak_text(
                    "I'm sorry, I'm having trouble right now. Please stay on the line or call "
                    "back in a few minutes, and we'll get you booked.",
                    reply,
                )
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
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

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
        self.provider_errors.append(f"{stage}: {error}")
        log.warning("%s provider failed: %s", stage, error)


def _session_time(call: CallChannel, name: str) -> float | None:
    session = getattr(call, "session", None)
    return getattr(session, name, None) if session is not None else None


class _Speaker:
    """Speaks sentences in order with pipelined TTS: every sentence's synthesis starts as soon
    as it is known; audio is queued for playout in sentence order, as it arrives."""

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
            asyncio.get_running_loop().create_task(self._synthesize(sentence, audio))
        )
        self._sentences.put_nowait((chunk, audio))

    async def finish(self) -> None:
        self._sentences.put_nowait(None)
        await self._player

    async def close(self) -> None:
        for task in (*self._synth_tasks, self._player):
            if not task.done():
                task.cancel()
        for task in (*self._synth_tasks, self._player):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _synthesize(self, sentence: str, audio: asyncio.Queue[bytes | None]) -> None:
        session = self.session
        produced = False
        try:
            async with contextlib.aclosing(session.tts.synthesize(sentence)) as stream:
                async for data in stream:
                    produced = True
                    audio.put_nowait(data)
        except ProviderError as error:
            session._provider_error("tts", error)
            if session.fallback_tts is not None and not produced:
                try:
                    async with contextlib.aclosing(
                        session.fallback_tts.synthesize(sentence)
                    ) as stream:
                        async for data in stream:
                            audio.put_nowait(data)
                except ProviderError as fallback_error:
                    session._provider_error("fallback tts", fallback_error)
        finally:
            audio.put_nowait(None)

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
