"""Outgoing audio: a frame queue that always yields a frame, and an absolute-deadline pacer.

Both are pure; the media clock's pass drives them once per 20 ms frame slot.

After a stall (the event loop was blocked past several frame slots) the policy is: **speech
stays intact, and the delay the stall added is shed in the next quiet stretch.**

- The pacer sends at most `max_catch_up_frames` frames in one pass (the frame due now and
  one late one, by default): frames later than that would reach the far end behind its
  jitter buffer, and a burst of them only floods it. The other missed slots are skipped:
  RTP time moves on, nothing is sent.
- The queue keeps every byte of the audio it holds through a skip (a reply is never cut),
  but remembers the skipped slots as lag (`fell_behind`). While lag is owed, quiet frames
  at the head of the queue (pauses between words and sentences, peak below about -36 dBFS)
  are dropped instead of sent, one owed slot each, so the audio behind them is back on
  time after the next pause: a live stream (echo, relayed audio) does not carry one stall's
  delay into the rest of the call, and stalls never add up. Audio without any pause keeps
  its delay until its first pause; a flush (barge-in) forgets the lag with the audio.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Final

from sipagent.media.codec import CLOCK_RATE, FRAME_BYTES, MULAW_SILENCE

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # see codec.py
    import audioop

_BYTES_PER_MS: Final = CLOCK_RATE / 1000  # G.711: one byte per sample
QUIET_PEAK: Final = 512  # 16-bit linear peak (about -36 dBFS): a pause, not speech
MAX_LAG_FRAMES: Final = 50  # owed slots remembered (1 s); beyond that a stall is not repaid


@dataclass(frozen=True, slots=True)
class OutgoingFrame:
    payload: bytes
    marker: bool  # first voiced frame of a talkspurt (RFC 3551 section 4.1)
    voiced: bool  # False: filler silence because nothing was queued
    # The first silent frame after a talkspurt its producer had not said was complete
    # (`end_talkspurt`): the producer fell behind, it did not stop.
    underrun: bool = False


@dataclass(frozen=True, slots=True)
class FlushResult:
    dropped_bytes: int
    dropped_ms: float


class PlayoutQueue:
    """FIFO of mu-law audio cut into fixed frames.

    `enqueue` accepts any length. When a frame is due and less than a full frame is
    queued, the remainder is sent padded with silence right away: either the
    utterance ended or the producer fell behind, and in both cases waiting for more
    would only make the gap longer. (A producer that keeps ahead never hits this,
    since partial chunks are joined before they reach the head.)
    """

    def __init__(self, frame_bytes: int = FRAME_BYTES, silence_byte: int = MULAW_SILENCE) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self.frame_bytes = frame_bytes
        self.silence_byte = silence_byte
        self._silence_frame = bytes([silence_byte]) * frame_bytes
        # Most frames of a call are silence: two shared (frozen) frames, not one per 20 ms.
        self._quiet = OutgoingFrame(self._silence_frame, marker=False, voiced=False)
        self._underrun = OutgoingFrame(
            self._silence_frame, marker=False, voiced=False, underrun=True
        )
        # Deleting from the front of a bytearray is amortised O(1) in CPython.
        self._buffer = bytearray()
        self._in_talkspurt = False
        self._talkspurt_complete = False  # end_talkspurt: the queued audio is all there is
        self._start_waited = False  # a talkspurt's lone first frame was held for one tick
        self.sent_audio_bytes = 0
        self.frames_out = 0
        self.paused = False
        self.lag_frames = 0  # slots skipped after stalls, not yet made up by quiet frames shed
        self.frames_shed = 0

    def fell_behind(self, frames: int) -> None:
        """The line skipped `frames` slots after a stall: shed as many quiet frames later."""
        self.lag_frames = min(self.lag_frames + frames, MAX_LAG_FRAMES)

    def enqueue(self, audio: bytes) -> None:
        self._buffer += audio
        self._talkspurt_complete = False

    def end_talkspurt(self) -> None:
        """The producer says the audio queued so far ends its utterance: the silence after it
        is the end of speech, not an underrun (the pacer then eases its lead back)."""
        if self._buffer:
            self._talkspurt_complete = True

    def next_frame(self) -> OutgoingFrame:
        """The frame to send now: queued audio if any, else silence. Never blocks or fails."""
        self.frames_out += 1
        buffer = self._buffer
        size = self.frame_bytes
        available = len(buffer)
        if not available or self.paused:
            return self._silence()
        # A talkspurt from a live source (an echo, a relay: a frame every 20 ms, just in time)
        # starts with a frame in hand, so each later frame has a whole frame of slack against
        # arrival jitter; started on a lone frame, its slack is the random phase between
        # arrival and tick, and a frame a millisecond late left a hole (one tick's wait).
        if (
            not self._in_talkspurt
            and available < 2 * size
            and not self._talkspurt_complete
            and not self._start_waited
        ):
            self._start_waited = True
            return self._quiet
        if self.lag_frames:
            available = self._shed_quiet_frames()
            if not available:
                return self._silence()
        if available >= size:
            payload = bytes(buffer[:size])
            del buffer[:size]
            self.sent_audio_bytes += size
        else:
            payload = bytes(buffer) + self._silence_frame[available:]
            buffer.clear()
            self.sent_audio_bytes += available
        marker = not self._in_talkspurt
        self._in_talkspurt = True
        self._start_waited = False
        return OutgoingFrame(payload, marker=marker, voiced=True)

    def _silence(self) -> OutgoingFrame:
        underrun = self._in_talkspurt and not self._talkspurt_complete and not self.paused
        self._in_talkspurt = False
        self._talkspurt_complete = False
        return self._underrun if underrun else self._quiet

    def _shed_quiet_frames(self) -> int:
        """Drop quiet whole frames from the head while lag is owed; returns what is left.

        Shed audio counts as sent (`sent_audio_bytes`): it is the part of the queued audio
        whose time has passed, so positions in a reply stay right (what was heard).
        """
        buffer = self._buffer
        size = self.frame_bytes
        while self.lag_frames and len(buffer) >= size:
            if audioop.max(audioop.ulaw2lin(buffer[:size], 2), 2) > QUIET_PEAK:
                break
            del buffer[:size]
            self.sent_audio_bytes += size
            self.lag_frames -= 1
            self.frames_shed += 1
        return len(buffer)

    def pause(self) -> None:
        """Go quiet at once but keep the queue (a possible barge-in, not yet confirmed)."""
        self.paused = True

    def resume(self) -> None:
        """Continue where pause() stopped; the next voiced frame starts a new talkspurt."""
        self.paused = False

    def flush(self) -> FlushResult:
        """Drop everything queued (barge-in). The next voiced frame starts a new talkspurt."""
        dropped = len(self._buffer)
        self._buffer = bytearray()
        self._in_talkspurt = False
        self._talkspurt_complete = False
        self._start_waited = False
        self.paused = False
        self.lag_frames = 0  # the delay was in the audio dropped: the next reply starts on time
        return FlushResult(dropped_bytes=dropped, dropped_ms=dropped / _BYTES_PER_MS)

    @property
    def talkspurt_ready(self) -> bool:
        """The line is quiet (between talkspurts, not paused) and two whole frames wait: one
        to send now, rather than at the next tick, and one for that tick. Three when the tick
        already held a lone first frame (next_frame): a live source (an echo, audio at
        real-time speed) has two by the next tick and no more, and starting it now would put
        the tick on its arrival phase, with no slack against jitter; a faster producer (TTS,
        whose first chunk may be a single frame) gets there within milliseconds."""
        needed = (3 if self._start_waited else 2) * self.frame_bytes
        return not self._in_talkspurt and not self.paused and len(self._buffer) >= needed

    @property
    def queued_bytes(self) -> int:
        return len(self._buffer)

    @property
    def queued_ms(self) -> float:
        return len(self._buffer) / _BYTES_PER_MS

    @property
    def is_playing(self) -> bool:
        return bool(self._buffer)

    @property
    def sent_audio_ms(self) -> float:
        """Voiced audio handed out so far (padding excluded): what the far end got to hear,
        plus quiet frames shed after a stall (their time passed while they waited)."""
        return self.sent_audio_bytes / _BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class PacerTick:
    send: int  # frames to send now
    skip: int  # older frame slots to give up (advance the RTP timestamp, send nothing)


class FramePacer:
    """Absolute-deadline frame clock: frame n is due at start + n * interval.

    Deadlines are computed, never accumulated, so sleep overshoot does not drift.
    After a stall longer than `max_catch_up_frames`, sending every missed frame at
    once would only flood the far end's jitter buffer with late packets, so the
    missed slots are skipped and only the current frame is sent (the module docstring
    says what happens to the audio that was queued for them).

    A talkspurt need not wait for the next deadline: `send_now` lets the next frame go
    out at once and moves the whole schedule earlier by as much (0-20 ms, on average
    half a frame off every reply's latency). RTP timestamps stay contiguous, so the
    stream's timestamps now run `ahead` of the wall clock; `give_back`, called for each
    silent frame, moves the schedule later again, so the RTP clock never drifts from real
    time over a call. How fast depends on why the line went quiet:
    - the talkspurt ended (its producer said so, PlayoutQueue.end_talkspurt): at most
      `give_back_step` (1 ms) per silent frame, so no interval on the wire is over 21 ms
      (all at once made one interval of up to 39 ms at every reply's end, a pacing error of
      up to 19 ms: the largest part of the p99 in bench/capacity.py);
    - an underrun (the producer fell behind: an echo, a relay, slow TTS): all at once, so
      the next frame's slot waits for audio that arrives just in time instead of staying
      ahead of it and underrunning again (gradual there made the echo test's source
      underrun in 1 run of 6).
    """

    def __init__(
        self,
        start: float,
        interval: float = 0.02,
        max_catch_up_frames: int = 2,
        give_back_step: float = 0.001,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_catch_up_frames < 1:
            raise ValueError("max_catch_up_frames must be at least 1")
        self.start = start
        self.interval = interval
        self.max_catch_up_frames = max_catch_up_frames
        self.give_back_step = give_back_step
        self._next_index = 0
        self.frames_sent = 0
        self.frames_skipped = 0
        self.ahead = 0.0  # seconds the schedule was moved earlier by send_now, not yet given back

    def deadline_of(self, index: int) -> float:
        return self.start + index * self.interval

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def next_deadline(self) -> float:
        return self.deadline_of(self._next_index)

    def due_frames(self, now: float) -> PacerTick:
        """Consume every deadline at or before `now` and say how to handle them."""
        due_until = max(int((now - self.start) / self.interval) + 1, 0)
        # Float division can land one off a deadline; settle it against deadline_of itself.
        if self.deadline_of(due_until) <= now:
            due_until += 1
        elif due_until > 0 and self.deadline_of(due_until - 1) > now:
            due_until -= 1
        due = due_until - self._next_index
        if due <= 0:
            return PacerTick(send=0, skip=0)
        self._next_index = due_until
        if due <= self.max_catch_up_frames:
            self.frames_sent += due
            return PacerTick(send=due, skip=0)
        self.frames_sent += 1
        self.frames_skipped += due - 1
        return PacerTick(send=1, skip=due - 1)

    def send_now(self, now: float, min_early: float = 0.001) -> bool:
        """Take the next frame slot now, if its deadline is more than `min_early` away.

        True: the caller sends one frame now; the following deadlines are `now + k * interval`.
        False: the slot is (nearly) due anyway, or taking it would put the RTP clock more than
        one frame ahead of real time; leave it to the regular tick. (Right after `give_back`
        the next deadline can be more than a frame away: audio arriving then waits for it,
        rather than stacking one lead on another, and the tick, asleep until that deadline,
        is never left sleeping past a deadline moved earlier.)
        """
        early = self.next_deadline - now
        if early <= min_early or self.ahead + early > self.interval:
            return False
        self.start -= early
        self.ahead += early
        self._next_index += 1
        self.frames_sent += 1
        return True

    def give_back(self, at_once: bool = False) -> None:
        """Undo (part of) the shifts of `send_now`: the next deadline moves later by `ahead`,
        at most `give_back_step` unless `at_once` (after an underrun)."""
        step = self.ahead if at_once else min(self.ahead, self.give_back_step)
        self.start += step
        self.ahead = 0.0 if step >= self.ahead else self.ahead - step
