"""Caller audio to a streaming STT in batches of a few frames instead of one message per frame.

A cloud recogniser costs a websocket message (SDK call, framing, masking, a send) per
`send_audio`; at 20 ms frames that is 50 messages a second per call, most of them silence
while the caller listens. `AudioBatcher` (sans-IO) joins frames into batches of
`batch_bytes` (80 ms for Deepgram: see `DeepgramSpeechToText.audio_batch_ms`) without costing
the latencies that matter:

  * the end of the caller's turn: voiced frames go out as they come (with any silence still
    waiting before them), and the silence after voice goes out frame by frame for
    `tail_bytes` of audio, so the recogniser hears the last words and runs its endpointing
    window on audio as it happens;
  * a batch never waits longer than `max_delay` (the frames stopped: silence suppression,
    hold, a DTMF key): `deadline` says when, `due()` hands it out then;
  * `flush()` before anything that must come after the last audio (Finalize, CloseStream).

Voiced frames are not batched: batched, the last words of a turn waited for the first silent
frame (20 ms) and the fake recogniser's final came that much later (0.302 -> 0.321 s after the
last voiced frame). Callers listen most of a call, so batching the silence alone still cuts a
call's messages by more than half. `SttFeed` is the thin asyncio adapter that runs one for a
call (a timer for the deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sipagent.media.clock import TIMER_RESOLUTION
from sipagent.providers.base import BatchesAudio, SpeechToText

SAMPLE_RATE = 8000  # mu-law: one byte per sample
FRAME_BYTES = 160


class AudioBatcher:
    """Frames in, batches out (see the module docstring). Times are the caller's clock."""

    def __init__(self, batch_bytes: int, tail_bytes: int, max_delay: float) -> None:
        self.batch_bytes = batch_bytes  # <= FRAME_BYTES: every frame goes out on its own
        self.tail_bytes = tail_bytes
        self.max_delay = max_delay
        self._batch = bytearray()
        self._tail_left = 0  # bytes of silence after voice still to go out frame by frame
        self.deadline: float | None = None  # when the pending batch must go out

    @property
    def pending_bytes(self) -> int:
        return len(self._batch)

    def push(self, frame: bytes, voiced: bool, now: float) -> bytes | None:
        """The message to send now (this frame, possibly after earlier ones), or None."""
        if voiced:
            self._tail_left = self.tail_bytes
            return self._with_pending(frame)
        if self._tail_left > 0:
            self._tail_left -= len(frame)
            return self._with_pending(frame)
        if self.batch_bytes <= FRAME_BYTES:
            return frame
        if not self._batch:
            self.deadline = now + self.max_delay
        self._batch += frame
        if len(self._batch) >= self.batch_bytes:
            return self.flush()
        return None

    def flush(self) -> bytes | None:
        """The pending partial batch (None if there is none)."""
        if not self._batch:
            return None
        batch = bytes(self._batch)
        self._batch.clear()
        self.deadline = None
        return batch

    def due(self, now: float) -> bytes | None:
        """The pending batch if its deadline has passed."""
        if self.deadline is None or now < self.deadline:
            return None
        return self.flush()

    def _with_pending(self, frame: bytes) -> bytes:
        if not self._batch:
            return frame
        self._batch += frame
        batch = self.flush()
        assert batch is not None
        return batch


class SttFeed:
    """One call's caller audio into its STT, batched as the STT asks (`BatchesAudio`); the
    asyncio side of AudioBatcher: a timer sends a batch whose frames stopped coming."""

    def __init__(self, stt: SpeechToText, clock: Callable[[], float]) -> None:
        self.stt = stt
        self.clock = clock
        self.batcher = batcher_for(stt)
        self.messages = 0  # send_audio calls made
        self._timer: asyncio.TimerHandle | None = None

    def push(self, frame: bytes, voiced: bool) -> None:
        now = self.clock()
        message = self.batcher.push(frame, voiced, now)
        if message is not None:
            self._send(message)
        elif self._timer is None and self.batcher.deadline is not None:
            self._arm(self.batcher.deadline - now)

    def flush(self) -> None:
        """Send the partial batch now (before Finalize or CloseStream, on a key press)."""
        message = self.batcher.flush()
        if message is not None:
            self._send(message)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _send(self, message: bytes) -> None:
        self.messages += 1
        self.stt.send_audio(message)

    def _arm(self, delay: float) -> None:
        # One timer per batch, never cancelled on the way: a batch that filled up in time
        # leaves it to find the next batch's later deadline, and it re-arms for that.
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        now = self.clock()
        # uvloop's timers may fire up to a millisecond early (see media.clock).
        message = self.batcher.due(now + TIMER_RESOLUTION)
        if message is not None:
            self._send(message)
        elif self.batcher.deadline is not None:
            self._arm(self.batcher.deadline - now)


def batcher_for(stt: SpeechToText) -> AudioBatcher:
    """The batcher `stt` asks for; one that passes every frame through when it asks none."""
    if not isinstance(stt, BatchesAudio) or stt.audio_batch_ms <= 0:
        return AudioBatcher(0, 0, 0.0)
    batch_bytes = stt.audio_batch_ms * SAMPLE_RATE // 1000
    # Twice the batch: frames arriving a little late (a media clock hiccup) still fill the
    # batch instead of splitting it; only frames that stopped coming hit the deadline.
    max_delay = 2 * stt.audio_batch_ms / 1000
    return AudioBatcher(batch_bytes, stt.speech_tail_ms * SAMPLE_RATE // 1000, max_delay)
