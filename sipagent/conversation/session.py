"""One call's conversation, the turn loop: caller audio -> STT -> LLM (+ tools) -> TTS -> RTP.

Everything streams: the first sentence of a reply is synthesised while the LLM is still
writing the second (speaker.py). Barge-in pauses the line on voice and flushes it on words
(barge_in.py). Failures are spoken around: an LLM error gets an apology and one retry (after
the service's retry-after, if it gave one), a second failure the fallback line; TTS failures
fall back to the offline voice (speaker.py); the STT provider reconnects by itself. A hold
(the caller's re-INVITE) pauses the idle timer, and on unhold the sentence that was cut is
said again from its start.

What the engine says and can do is injected: the system prompt and the toolset (schemas and
executor) come from the app, so another business is another toolset and prompt. The history
sent to the LLM stays valid on every path (history.py); a tool still running when the caller
interrupts is finished and its result kept, so a booking that committed is never forgotten.

The parts: keypad.py (digits into entries), idle.py (re-prompts and the time limit, by
deadline), speaker.py (a reply's sentences to audio), history.py (the chat history),
turns.py (the turns and when they are recorded); this module runs them for one call.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import webrtcvad

from sipagent.channel import CallChannel
from sipagent.conversation.barge_in import (
    BargeInAction,
    BargeInEvent,
    BargeInPolicy,
    BargeInSettings,
    is_backchannel,
)
from sipagent.conversation.chunker import SentenceChunker
from sipagent.conversation.failures import ProviderFailures
from sipagent.conversation.heard import first_unheard_chunk, heard_text
from sipagent.conversation.history import ChatHistory, ToolRound
from sipagent.conversation.idle import IdleAction, IdlePolicy
from sipagent.conversation.keypad import KeypadEntry
from sipagent.conversation.speaker import Reply, Speaker, Voices
from sipagent.conversation.state import ConversationState
from sipagent.conversation.stt_feed import SttFeed
from sipagent.conversation.toolset import CallAction, Toolset
from sipagent.conversation.tts_slots import TtsSlots
from sipagent.conversation.turns import Turn, TurnLog, TurnTimings
from sipagent.observability.events import BargeIn, ProviderStage, TurnCompleted
from sipagent.providers.base import (
    LanguageModel,
    ProviderError,
    SpeechToText,
    SttEventKind,
    TextToSpeech,
    ToolCall,
    WarmsUp,
)

log = logging.getLogger("sipagent.conversation")

APOLOGY = "Sorry, just one moment."
LLM_FALLBACK = (
    "I'm sorry, I'm having trouble right now. Please stay on the line or call back in a few "
    "minutes, and we'll get you booked."
)
STT_LOST = (
    "I'm sorry, I can't hear you right now. You can type your phone number on the keypad, "
    "or please call us back in a few minutes."
)

# Why silence is not being counted (IdlePolicy pauses).
_REPLYING = "reply"  # we are thinking or talking
_CALLER_MID_TURN = "caller mid-turn"  # words came, the end of the caller's turn not yet
_ON_HOLD = "hold"  # the caller is away on purpose

RECENT_BARGE_INS_KEPT = 100  # per call, for /status and the benchmark's dump


@dataclass(frozen=True, slots=True)
class Phrases:
    """What the engine itself says, when there is no model reply to speak."""

    apology: str = APOLOGY  # an LLM failure, before the retry
    llm_fallback: str = LLM_FALLBACK
    stt_lost: str = STT_LOST
    still_there: str = "Are you still there?"
    idle_goodbye: str = "I haven't heard anything, so I'll hang up now. Goodbye!"
    time_limit: str = (
        "I'm sorry, we've reached the time limit for this call. "
        "Please call back if you need anything else. Goodbye!"
    )
    transfer_failed: str = (
        "I'm sorry, I couldn't reach the front desk right now. I can have someone "
        "call you back. What's the best number to reach you?"
    )


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    greeting: str = "Hello, how can I help you?"
    phrases: Phrases = field(default_factory=Phrases)
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


class ConversationSession:
    def __init__(
        self,
        call: CallChannel,
        *,
        stt: SpeechToText,
        llm: LanguageModel,
        tts: TextToSpeech,
        toolset: Toolset,
        system_prompt: str,
        settings: ConversationSettings | None = None,
        fallback_tts: TextToSpeech | None = None,
        transfer: Callable[[str], Awaitable[bool]] | None = None,
        on_turn: Callable[[int, Turn], None] | None = None,
        clock: Callable[[], float] | None = None,
        tts_slots: TtsSlots | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.call = call
        self.stt = stt
        self.llm = llm
        self.toolset = toolset
        self.settings = settings or ConversationSettings()
        self.phrases = self.settings.phrases
        self.transfer = transfer
        self.clock = clock or asyncio.get_running_loop().time
        self.sleep = sleep
        self.events = call.events
        self.failures = ProviderFailures(call.call_id, self.events)
        self.voices = Voices(tts, fallback_tts, tts_slots, self.failures)
        self.history = ChatHistory(system_prompt)
        self.turn_log = TurnLog(call.call_id, on_turn)
        self.barge_in = BargeInPolicy(self.settings.barge_in)
        self.barge_in_events: list[BargeInEvent] = []  # the last RECENT_BARGE_INS_KEPT
        self.state = ConversationState.LISTENING
        self.keypad = KeypadEntry(self.settings.dtmf_interdigit_seconds)
        self.idle = IdlePolicy(
            self.clock(),
            reprompt_after=self.settings.idle_reprompt_seconds,
            max_reprompts=self.settings.idle_max_reprompts,
            max_call=self.settings.max_call_seconds,
        )
        self._idle_resumed = asyncio.Event()  # a pause ended: the idle deadline may be sooner
        self._vad = webrtcvad.Vad(self.settings.vad_mode)
        self._stt_feed = SttFeed(stt, self.clock)
        self._pending_finals: list[str] = []
        self._last_caller_voice: float | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._reply: Reply | None = None
        # Tool rounds still running (a booking waiting on the database): a later reply waits
        # for them so the model learns their real outcome.
        self._tool_rounds: set[asyncio.Task[CallAction | None]] = set()
        self._done = asyncio.Event()

    @property
    def turns(self) -> list[Turn]:
        return self.turn_log.turns

    @property
    def provider_errors(self) -> list[str]:
        """Recent provider failures as "stage: message" lines (for people; the typed ones
        are `failures.recent`, and every one went out as a ProviderFailure event)."""
        return self.failures.errors

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        greeting = self.settings.greeting
        try:
            await self.stt.start()
        except ProviderError as error:
            self.failures.report(ProviderStage.STT, error)
            # The caller must not talk into the void.
            greeting = f"{greeting} {self.phrases.stt_lost}"
        try:
            # A worker that dies takes the group down: the call ends, loudly, instead of going
            # on deaf (no audio pump) or without its time limit (no idle watcher).
            async with asyncio.TaskGroup() as workers:
                if isinstance(self.llm, WarmsUp):
                    # The LLM's connection opens while the greeting plays, not on the caller's
                    # first turn (the greeting's own TTS request opens the TTS connection).
                    workers.create_task(self.llm.warm_up(), name="llm warm-up")
                for worker in (
                    self._pump_audio, self._consume_transcripts, self._consume_digits,
                    self._watch_idle, self._follow_hold,
                ):  # fmt: skip
                    workers.create_task(worker(), name=worker.__name__.strip("_"))
                self._start_reply(None, fixed_text=greeting)
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
            self.turn_log.release()
            try:
                self._stt_feed.close()  # CloseStream must come after the last audio
                await asyncio.wait_for(self.stt.close(), 2.0)
            except Exception as error:
                log.warning("[%s] closing the STT failed: %r", self.call.call_id, error)

    def _end(self) -> None:
        self._done.set()

    async def say_and_wait(self, text: str) -> None:
        """Interrupt whatever is going on, say `text`, and return once it has been played."""
        self._start_reply(None, fixed_text=text)
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
                self._stt_feed.push(frame, voiced)
                self._apply_barge_in(self.barge_in.on_frame(voiced, now))
            except Exception:  # one bad frame must not stop the caller being heard
                log.exception("[%s] caller audio handling failed", self.call.call_id)
        self._end()  # the call ended

    def _apply_barge_in(self, event: BargeInEvent) -> None:
        if event.action == BargeInAction.NONE:
            return
        self.barge_in_events.append(event)
        del self.barge_in_events[:-RECENT_BARGE_INS_KEPT]
        self.events.emit(BargeIn(self.call.call_id, event.action, event.at, event.caller_onset))
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
                    self.idle.pause(_CALLER_MID_TURN)
                    self._apply_barge_in(self.barge_in.on_transcript(event.text, now))
                if event.speech_final:
                    self._end_of_caller_turn(now)
            elif event.kind == SttEventKind.UTTERANCE_END:
                self._end_of_caller_turn(now)
            elif event.kind == SttEventKind.ERROR:
                self.failures.note(ProviderStage.STT, event.detail)
                log.warning("[%s] STT: %s", self.call.call_id, event.detail)
                if event.detail.startswith("gave up"):
                    self._start_reply(None, fixed_text=self.phrases.stt_lost)

    def _end_of_caller_turn(self, now: float) -> None:
        text = " ".join(self._pending_finals).strip()
        self._pending_finals.clear()
        self._resume_idle(_CALLER_MID_TURN, now)
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
        iterator = aiter(self.call.digits())
        # Never cancel a pending __anext__ (that would close the generator): wait on it instead.
        next_digit = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                deadline = self.keypad.deadline
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                done, _ = await asyncio.wait({next_digit}, timeout=timeout)
                now = self.clock()
                if not done:
                    self._keypad_entry(self.keypad.expire(now))
                    continue
                try:
                    digit = next_digit.result()
                except StopAsyncIteration:
                    return
                next_digit = asyncio.ensure_future(anext(iterator))
                self._stt_feed.flush()  # a key press is a turn boundary: no audio left waiting
                self.idle.caller_active(now)
                self._keypad_entry(self.keypad.press(digit, now))
        finally:
            next_digit.cancel()

    def _keypad_entry(self, entry: str | None) -> None:
        if entry is None:
            return
        shortcut = self.toolset.keypad_shortcuts.get(entry)
        if shortcut is not None:
            self._start_reply(None, forced_tool=ToolCall(f"keypad_{entry}", shortcut, "{}"))
            return
        self._start_reply(f"(keypad) {entry}", timings=TurnTimings(stt_final=self.clock()))

    # -- idle and call length ---------------------------------------------------------------
    async def _watch_idle(self) -> None:
        """Re-prompts and the call's time limit, each at its deadline; woken early when a pause
        ends (silence then counts from that moment, which can bring the deadline closer)."""
        while (deadline := self.idle.deadline) is not None:
            self._idle_resumed.clear()
            delay = deadline - self.clock()
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
                # that ends the call's workers, leaving this one waiting for the next deadline.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._idle_resumed.wait()
                continue
            action = self.idle.tick(self.clock())
            if action == IdleAction.REPROMPT:
                self._start_reply(None, fixed_text=self.phrases.still_there)
            elif action == IdleAction.HANG_UP:
                self._start_reply(None, fixed_text=self.phrases.idle_goodbye, then_hangup=True)
            elif action == IdleAction.TIME_LIMIT:
                self._start_reply(None, fixed_text=self.phrases.time_limit, then_hangup=True)

    def _resume_idle(self, reason: str, now: float) -> None:
        self.idle.resume(reason, now)
        self._idle_resumed.set()

    # -- hold -------------------------------------------------------------------------------
    async def _follow_hold(self) -> None:
        if self.call.on_hold:
            self.idle.pause(_ON_HOLD)
        async for held in self.call.hold_changes():
            # While held the media layer sends nothing and keeps the queue (RtpSession).
            log.info("[%s] caller %s", self.call.call_id, "put us on hold" if held else "is back")
            if held:
                # The caller is away on purpose: no "Are you still there?" meanwhile.
                self.idle.pause(_ON_HOLD)
                continue
            now = self.clock()
            self.idle.caller_active(now)
            self._resume_idle(_ON_HOLD, now)
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
        fixed_text: str | None = None,
        forced_tool: ToolCall | None = None,
        then_hangup: bool = False,
    ) -> None:
        if user_text is not None:
            self.turn_log.hold()  # until the reply speaks
        # A new turn while we speak: stop talking first, keeping what was heard in history.
        self._interrupt_reply()
        timings = timings or TurnTimings()
        if user_text is not None:
            log.info("[%s] caller: %s", self.call.call_id, user_text)
            self.history.add_user(user_text)
            turn = Turn("user", user_text, timings=timings)
            # The caller's part of the timings (speech end, final transcript) is complete.
            self._completed(self.turn_log.add(turn), turn)
        reply = Reply(self.call.sent_audio_ms, timings, len(self.history))
        self._reply = reply
        self.state = ConversationState.THINKING
        self.idle.pause(_REPLYING)
        self._reply_task = asyncio.get_running_loop().create_task(
            self._run_reply(reply, fixed_text, forced_tool, then_hangup)
        )

    async def _run_reply(
        self,
        reply: Reply,
        fixed_text: str | None,
        forced_tool: ToolCall | None,
        then_hangup: bool,
    ) -> None:
        action: CallAction | None = None
        try:
            if fixed_text is not None:
                await self._speak_text(fixed_text, reply)
                self.history.add_assistant(fixed_text)
            elif forced_tool is not None:
                # A keypad shortcut: the tool runs at once, then the model speaks from its result.
                action = await self._run_tools((forced_tool,), "")
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
                self.state = ConversationState.LISTENING
                self._resume_idle(_REPLYING, self.clock())
                self.turn_log.release()
        self._record_assistant(reply, interrupted=False)
        if then_hangup or action == CallAction.HANG_UP:
            await self.call.hangup("agent ended the call")
            self._end()
        elif action == CallAction.TRANSFER:
            await self._transfer()

    async def _respond(self, reply: Reply) -> CallAction | None:
        """LLM rounds until it stops calling tools; returns a call action if any."""
        action: CallAction | None = None
        await self._settle_tool_rounds()
        for _ in range(self.settings.max_tool_rounds):
            text, tool_calls = await self._stream_llm_with_retry(reply)
            if not tool_calls:
                if text:
                    self.history.add_assistant(text)
                return action
            action = await self._run_tools(tool_calls, text) or action
            if action is not None:
                # Let the model say its goodbye/transfer line from the tool result, once.
                text, _ = await self._stream_llm_with_retry(reply)
                if text:
                    self.history.add_assistant(text)
                return action
        return action

    async def _run_tools(self, tool_calls: tuple[ToolCall, ...], text: str) -> CallAction | None:
        """Run one round of tool calls (each id answered in the history at once, see
        ChatHistory.open_tool_round). The round runs on if the reply is cancelled (a booking is
        not abandoned half way), and the next reply waits for it (see _settle_tool_rounds)."""
        tool_round = self.history.open_tool_round(text, tool_calls)
        round_task = asyncio.get_running_loop().create_task(
            self._execute_tools(tool_round), name="tool round"
        )
        self._tool_rounds.add(round_task)
        round_task.add_done_callback(self._tool_rounds.discard)
        return await asyncio.shield(round_task)

    async def _execute_tools(self, tool_round: ToolRound) -> CallAction | None:
        action = None
        for index, tool_call in enumerate(tool_round.calls):
            outcome = await self.toolset.execute(tool_call, self.call.call_id)
            log.info("[%s] tool %s -> %s", self.call.call_id, tool_call.name, outcome.content[:200])
            tool_round.answer(index, outcome.content)
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

    async def _stream_llm_with_retry(self, reply: Reply) -> tuple[str, tuple[ToolCall, ...]]:
        """The model's reply, or after a failure an apology and one retry; whatever fails, the
        caller hears something (the fallback line), and each failure is one log line."""
        for attempt in range(2):
            if not self.failures.usable(ProviderStage.LLM):
                break
            chunks_before = len(reply.chunks)
            try:
                return await self._stream_llm(reply)
            except ProviderError as error:
                self.failures.report(ProviderStage.LLM, error)
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
                apology = self._speak_text(self.phrases.apology, reply)
                await asyncio.gather(apology, self.sleep(wait))
        await self._speak_text(self.phrases.llm_fallback, reply)
        return "", ()

    async def _stream_llm(self, reply: Reply) -> tuple[str, tuple[ToolCall, ...]]:
        chunker = SentenceChunker(
            min_chars=self.settings.min_chunk_chars,
            first_min_chars=self.settings.first_chunk_min_chars,
        )
        speaker = self._speaker(reply)
        text = ""
        tool_calls: tuple[ToolCall, ...] = ()
        try:
            messages, schemas = self.history.messages, self.toolset.schemas
            async with contextlib.aclosing(self.llm.stream(messages, schemas)) as stream:
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
        reply.add_text(text)
        return text.strip(), tool_calls

    async def _speak_text(self, text: str, reply: Reply) -> None:
        speaker = self._speaker(reply)
        chunker = SentenceChunker(min_chars=1)
        try:
            for sentence in chunker.feed(text) + chunker.flush():
                speaker.say(sentence)
            await speaker.finish()
        finally:
            await speaker.close()
        reply.add_text(text)

    def _speaker(self, reply: Reply) -> Speaker:
        return Speaker(
            reply,
            self.voices,
            play=self.call.play,
            end_talkspurt=self.call.end_talkspurt,
            talkspurt_started=lambda: self.call.media_times.talkspurt_started_at,
            first_packet_sent=self.call.first_packet_sent,
            clock=self.clock,
            on_audible=self._reply_audible,
        )

    def _reply_audible(self) -> None:
        """The current reply's first audio went to the line."""
        self.state = ConversationState.SPEAKING
        self.barge_in.set_agent_speaking(True)
        self.turn_log.release()

    async def _wait_played(self) -> None:
        await self.call.drained()
        reply = self._reply
        if reply is not None and reply.timings.first_reply_packet is None:
            reply.timings.first_reply_packet = self.call.media_times.talkspurt_started_at

    # -- interruption -----------------------------------------------------------------------
    def _interrupt_reply(self) -> None:
        """Stop the reply being spoken, now: flush the line, cancel its LLM/TTS streams, and
        record what the caller heard (the audio count is exact at this moment)."""
        task, reply = self._reply_task, self._reply
        if task is None or task.done() or task is asyncio.current_task():
            return
        self.call.flush()
        if reply is not None:
            reply.cut = True
        task.cancel()
        self._reply_task = None
        self._reply = None
        self.barge_in.set_agent_speaking(False)
        self.state = ConversationState.LISTENING
        self._resume_idle(_REPLYING, self.clock())
        if reply is not None:
            reply.timings.last_voiced_packet = self.call.media_times.last_voiced_sent_at
            self._record_assistant(reply, interrupted=True)

    async def _cancel_reply(self) -> None:
        """At the end of the call: stop whatever is still being said."""
        task = self._reply_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait({task})  # it logs its own failures

    def _record_assistant(self, reply: Reply, *, interrupted: bool) -> None:
        if reply.recorded:
            return
        reply.recorded = True
        played_ms = self.call.sent_audio_ms - reply.baseline_sent_ms
        heard = heard_text(reply.chunks, played_ms) if interrupted else reply.text
        if interrupted:
            self.history.keep_heard_part(reply.history_start, heard)
        if reply.text or heard:
            log.info(
                "[%s] agent%s: %s", self.call.call_id, " (interrupted)" if interrupted else "",
                heard if interrupted else reply.text,
            )  # fmt: skip
            turn = Turn("assistant", reply.text, heard, interrupted, reply.timings)
            index = self.turn_log.add(turn)
            # The first packet's wire stamp may still be on its way (Speaker): wait for it.
            reply.when_timings_final(lambda: self._completed(index, turn))

    def _completed(self, index: int, turn: Turn) -> None:
        self.events.emit(TurnCompleted(self.call.call_id, index, turn))

    async def _transfer(self) -> None:
        target = self.settings.transfer_uri
        if target and self.transfer is not None and await self.transfer(target):
            self._end()
            return
        self._start_reply(None, fixed_text=self.phrases.transfer_failed)


class _CallOver(Exception):
    """Raised inside the worker group once the call is over, to stop the workers."""
