"""Speaking a reply: sentences in order, with pipelined TTS.

A sentence's synthesis starts as soon as it is known and a request slot is free (two per
reply: the sentence playing and the next; and the process-wide TtsSlots); its audio is played
in sentence order as it arrives. A TTS failure says that sentence in the fallback voice, and
a failure that cannot heal sends the rest of the call there.

The speaker owns no call state: it plays through `play`, reads the wire time of the current
talkspurt through `talkspurt_started`, and tells its owner once the reply is audible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sipagent.conversation.failures import ProviderFailures
from sipagent.conversation.heard import SpokenChunk
from sipagent.conversation.tts_slots import TtsSlots
from sipagent.conversation.turns import TurnTimings
from sipagent.observability.events import ProviderStage
from sipagent.providers.base import ProviderError, TextToSpeech

log = logging.getLogger("sipagent.conversation")

# Sentences of one reply synthesised at once: the one playing and the next.
TTS_REQUESTS_PER_REPLY = 2
# A reply's first packet that play() did not send at once is waited for this long (the media
# clock's event): held or paused audio may not go out for a long time, and is not "the reply's
# first packet" then.
FIRST_PACKET_WAIT = 0.5


class Reply:
    """The reply being spoken: its chunks (for heard-text) and its playout baseline."""

    def __init__(self, baseline_sent_ms: float, timings: TurnTimings, history_start: int) -> None:
        self.baseline_sent_ms = baseline_sent_ms
        self.history_start = history_start  # where this reply's messages start in the history
        self.timings = timings
        self.chunks: list[SpokenChunk] = []
        self.text = ""
        self.started_speaking = False
        # The caller interrupted it: nothing more of it may be played (the line was flushed).
        self.cut = False
        self.recorded = False  # its assistant turn is in the turn log
        self.tts_requests = asyncio.Semaphore(TTS_REQUESTS_PER_REPLY)
        # Stamps still on their way (the first packet's wire time), and who waits for them.
        self._stamps_pending: set[asyncio.Task[None]] = set()
        self._on_timings_final: Callable[[], None] | None = None

    def stamp_pending(self, task: asyncio.Task[None]) -> None:
        """`task` will still write into `timings`; they are final once it is done."""
        self._stamps_pending.add(task)
        task.add_done_callback(self._stamp_done)

    def when_timings_final(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no stamp is pending any more: now, or when the last one lands."""
        if self._stamps_pending:
            self._on_timings_final = callback
        else:
            callback()

    def _stamp_done(self, task: asyncio.Task[None]) -> None:
        self._stamps_pending.discard(task)
        callback = self._on_timings_final
        if callback is not None and not self._stamps_pending:
            self._on_timings_final = None
            callback()

    def add_text(self, text: str) -> None:
        self.text = f"{self.text} {text.strip()}".strip()


@dataclass(frozen=True, slots=True)
class Voices:
    """The call's TTS, the offline voice it falls back to, and the process-wide request cap."""

    tts: TextToSpeech
    fallback: TextToSpeech | None
    slots: TtsSlots | None  # None: unbounded
    failures: ProviderFailures


class Speaker:
    def __init__(
        self,
        reply: Reply,
        voices: Voices,
        *,
        play: Callable[[bytes], None],
        end_talkspurt: Callable[[], None],
        talkspurt_started: Callable[[], float | None],
        first_packet_sent: Callable[[float | None], Awaitable[float | None]],
        clock: Callable[[], float],
        on_audible: Callable[[], None],
    ) -> None:
        self.reply = reply
        self.voices = voices
        self._play = play
        self._end_talkspurt = end_talkspurt
        self._talkspurt_started = talkspurt_started
        self._first_packet_sent = first_packet_sent
        self._clock = clock
        self._on_audible = on_audible
        self._sentences: asyncio.Queue[tuple[SpokenChunk, asyncio.Queue[bytes | None]] | None] = (
            asyncio.Queue()
        )
        self._synth_tasks: list[asyncio.Task[None]] = []
        self._player = asyncio.get_running_loop().create_task(self._play_in_order())

    def say(self, sentence: str) -> None:
        chunk = SpokenChunk(sentence)
        self.reply.chunks.append(chunk)
        audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._synth_tasks.append(
            asyncio.get_running_loop().create_task(self._synthesize(chunk, audio))
        )
        self._sentences.put_nowait((chunk, audio))

    async def finish(self) -> None:
        """Wait until every sentence said so far has been handed to play()."""
        self._sentences.put_nowait(None)
        await self._player

    async def close(self) -> None:
        tasks = (*self._synth_tasks, self._player)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.wait(tasks)
        call_id = self.voices.failures.call_id
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("[%s] speaking failed: %r", call_id, task.exception())

    async def _synthesize(self, chunk: SpokenChunk, audio: asyncio.Queue[bytes | None]) -> None:
        voices, reply = self.voices, self.reply
        try:
            async with reply.tts_requests:
                first_sentence = reply.chunks[0] is chunk
                if voices.failures.usable(ProviderStage.TTS) and await self._speak_with(
                    ProviderStage.TTS, voices.tts, chunk, audio, first_sentence=first_sentence
                ):
                    return
                if voices.fallback is not None:
                    await self._speak_with(
                        ProviderStage.FALLBACK_TTS, voices.fallback, chunk, audio
                    )
        finally:
            audio.put_nowait(None)

    async def _speak_with(
        self,
        stage: ProviderStage,
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
        slots = self.voices.slots if stage == ProviderStage.TTS else None
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
            self.voices.failures.report(stage, error)
            failed = True
        return produced or not failed

    async def _play_in_order(self) -> None:
        reply = self.reply
        while (item := await self._sentences.get()) is not None:
            chunk, audio = item
            while (data := await audio.get()) is not None:
                if reply.cut:
                    # The line was flushed before this task was cancelled, and nothing of this
                    # reply may follow the flush (play may send it at once).
                    return
                if reply.timings.tts_first_byte is None:
                    reply.timings.tts_first_byte = self._clock()
                chunk.audio_ms += len(data) / 8  # mu-law: 8 bytes per ms
                chunk.audio += data
                first = not reply.started_speaking
                reply.started_speaking = True
                before = self._talkspurt_started()
                self._play(data)
                if first:
                    self._note_first_packet(before)
                    self._on_audible()  # after play: not on the first frame's path
        if reply.started_speaking and not reply.cut:
            # The whole reply is queued: the quiet after it is its end, not slow TTS.
            self._end_talkspurt()

    def _note_first_packet(self, before: float | None) -> None:
        """Record the wire time of the reply's first RTP packet: at once if play() sent it
        (a talkspurt on a quiet line), else when the media tick has."""
        sent = self._talkspurt_started()
        if sent is not None and sent != before:
            self.reply.timings.first_reply_packet = sent
            return
        # The reply keeps the task (referenced until done) and knows its timings wait for it.
        watch = asyncio.get_running_loop().create_task(self._watch_first_packet(before))
        self.reply.stamp_pending(watch)

    async def _watch_first_packet(self, before: float | None) -> None:
        timings = self.reply.timings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_PACKET_WAIT):
                sent = await self._first_packet_sent(before)
                if sent is not None and timings.first_reply_packet is None:
                    timings.first_reply_packet = sent
