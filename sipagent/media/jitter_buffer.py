"""Adaptive jitter buffer for one inbound G.711 stream (mu-law payloads), sans-IO.

Timing model: when the buffer (re-)anchors on a packet, that packet's arrival time
and RTP timestamp become the stream's time base. Every later packet is due at

    anchor_arrival + (timestamp - anchor_timestamp) / clock_rate + target_delay

so the sender's own clock paces playout: reordering and jitter up to the target
delay are absorbed, and timestamp jumps with consecutive sequence numbers
(silence suppression) become gaps in delivery, not losses.

Re-anchoring happens only where it cannot stretch audio: at the first packet,
after the buffer ran dry (the talker stopped, or packets came too late), at a
marker bit with nothing buffered, and on a timestamp discontinuity. The target
delay adapts (RFC 3550 A.8 jitter) only at those points.

The caller supplies the clock: `arrival` and `now` are monotonic seconds.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from sipagent.media.codec import MULAW_SILENCE, attenuate_mulaw
from sipagent.media.rtp import SEQUENCE_MODULO, TIMESTAMP_MODULO, RtpPacket

# RFC 3550 A.1: a packet this far behind is not reordering but a restarted source.
MAX_MISORDER: Final = 100
_RECENT_PLAYED: Final = 128  # remembered sequence numbers, to tell duplicates from late packets
_CONCEALMENT_GAIN: Final = 0.5
_JITTER_GAIN: Final = 1 / 16  # RFC 3550 A.8


class PushOutcome(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"  # its slot was already played or concealed
    TOO_EARLY = "too_early"  # beyond the buffer's capacity window


@dataclass(frozen=True, slots=True)
class JitterStats:
    received: int  # every packet pushed, whatever the outcome
    duplicates: int
    late: int
    too_early: int
    lost: int  # sequence numbers never played: concealed ones plus gaps skipped at re-anchor
    concealed: int
    expected: int  # sequence numbers the stream spanned (RFC 3550 A.3)
    delivered: int  # real frames handed out
    jitter_ms: float  # RFC 3550 A.8 interarrival jitter
    target_delay_ms: float
    underruns: int  # the buffer ran dry because packets came too late
    reanchors: int
    buffered: int


@dataclass(slots=True)
class _Slot:
    payload: bytes | None  # None: a non-audio packet (telephone-event) using a sequence number
    playout: float


def _signed_delta(value: int, reference: int, modulo: int) -> int:
    """value - reference in modular arithmetic, mapped to the nearest signed distance."""
    delta = (value - reference) % modulo
    return delta - modulo if delta >= modulo // 2 else delta


class JitterBuffer:
    def __init__(
        self,
        frame_samples: int = 160,
        clock_rate: int = 8000,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        initial_delay: float = 0.04,
        capacity_frames: int = 500,
        eager: bool = False,
    ) -> None:
        """`eager`: hand out frames as soon as they are in sequence instead of at their
        playout time; only a missing frame is waited for (up to the target delay). Right for
        a consumer that does not play the audio out loud (speech recognition, VAD), where
        the playout delay would only add latency."""
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.frame_samples = frame_samples
        self.clock_rate = clock_rate
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.initial_delay = min(max(initial_delay, min_delay), max_delay)
        self.capacity_frames = capacity_frames
        self.eager = eager
        self._frame_duration = frame_samples / clock_rate
        # Timestamps further than this from the anchor's prediction are a discontinuity.
        self._horizon = capacity_frames * self._frame_duration

        self._received = 0
        self._duplicates = 0
        self._late = 0
        self._too_early = 0
        self._lost = 0
        self._concealed = 0
        self._delivered = 0
        self._underruns = 0
        self._reanchors = 0
        self._expected_in_past_streams = 0
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._slots: dict[int, _Slot] = {}  # keyed by extended sequence number
        self._next_seq: int | None = None  # extended sequence number to play next
        self._first_seq = 0
        self._highest_seq = 0
        self._anchor_arrival = 0.0
        self._anchor_timestamp = 0
        self._anchors_in_stream = 0
        self._target_delay = self.initial_delay
        self._drained = False
        self._next_due = 0.0  # playout time of the next sequence number
        self._delivered_since_anchor = False
        self._fill_floor = 0  # lowest sequence a reordered packet may still claim before playout
        self._lost_at_anchor = 0
        self._last_payload: bytes | None = None
        self._concealed_in_row = 0
        self._recent_played: deque[int] = deque()
        self._recent_played_set: set[int] = set()
        self._restart_candidate: int | None = None
        self._jitter = 0.0  # in timestamp units, as RFC 3550 A.8 keeps it
        self._previous_arrival: float | None = None
        self._previous_timestamp = 0

    def reset(self) -> None:
        """Forget the current stream (new SSRC); cumulative counters are kept."""
        self._expected_in_past_streams += self._expected_in_stream()
        self._reset_stream()

    # ------------------------------------------------------------------ input

    def push(self, packet: RtpPacket, arrival: float) -> PushOutcome:
        """Buffer an audio packet (mu-law payload) that arrived at `arrival`."""
        return self._push(packet, arrival, packet.payload)

    def push_non_audio(self, packet: RtpPacket, arrival: float) -> PushOutcome:
        """Record a same-stream non-audio packet (e.g. telephone-event).

        It shares the sequence number space, so without this its number would look
        like a lost audio packet and be concealed. It delivers no frame.
        """
        return self._push(packet, arrival, None)

    def _push(self, packet: RtpPacket, arrival: float, payload: bytes | None) -> PushOutcome:
        self._received += 1
        if self._next_seq is None:
            if payload is None:
                return PushOutcome.ACCEPTED  # no audio yet to time it against; nothing to keep
            self._start_stream(packet, arrival)
            return PushOutcome.ACCEPTED

        seq = self._extend(packet.sequence)
        offset = seq - self._next_seq
        if offset < 0:
            if seq >= self._fill_floor and not self._delivered_since_anchor:
                # Reordered behind the anchor packet, but nothing has been played yet.
                refund = min(self._lost_at_anchor, self._next_seq - seq)
                self._lost -= refund
                self._lost_at_anchor -= refund
                self._next_seq = seq
                self._first_seq = min(self._first_seq, seq)
                return self._store(seq, packet, arrival, payload)
            if seq in self._recent_played_set:
                self._duplicates += 1
                return PushOutcome.DUPLICATE
            if offset < -MAX_MISORDER and self._is_restart(packet, payload):
                return self._restart_stream(packet, arrival)
            self._late += 1
            if payload is not None:
                self._update_jitter(packet.timestamp, arrival)
            return PushOutcome.LATE
        if seq in self._slots:
            self._duplicates += 1
            return PushOutcome.DUPLICATE
        if offset >= self.capacity_frames:
            if self._is_restart(packet, payload):
                return self._restart_stream(packet, arrival)
            self._too_early += 1
            return PushOutcome.TOO_EARLY

        self._restart_candidate = None
        if payload is not None and self._needs_anchor(packet, arrival):
            self._anchor(seq, packet, arrival)
        return self._store(seq, packet, arrival, payload)

    def _store(
        self, seq: int, packet: RtpPacket, arrival: float, payload: bytes | None
    ) -> PushOutcome:
        self._slots[seq] = _Slot(payload, self._playout_time(packet.timestamp))
        self._highest_seq = max(self._highest_seq, seq)
        if payload is not None:
            self._update_jitter(packet.timestamp, arrival)
        return PushOutcome.ACCEPTED

    def _extend(self, sequence: int) -> int:
        """RFC 3550 A.1 extended sequence number: the 16-bit value nearest the playout point."""
        assert self._next_seq is not None
        return self._next_seq + _signed_delta(sequence, self._next_seq, SEQUENCE_MODULO)

    def _start_stream(self, packet: RtpPacket, arrival: float) -> None:
        self._next_seq = self._first_seq = self._highest_seq = packet.sequence
        self._anchor(packet.sequence, packet, arrival)
        # The very first packets may arrive swapped: allow earlier ones until playout starts.
        self._fill_floor = packet.sequence - MAX_MISORDER
        self._store(packet.sequence, packet, arrival, packet.payload)

    def _is_restart(self, packet: RtpPacket, payload: bytes | None) -> bool:
        """RFC 3550 A.1: two sequential packets far off the expected numbering mean
        the source restarted its sequence numbers; one alone is just a stray."""
        if payload is not None and packet.sequence == self._restart_candidate:
            return True
        self._restart_candidate = (packet.sequence + 1) % SEQUENCE_MODULO
        return False

    def _restart_stream(self, packet: RtpPacket, arrival: float) -> PushOutcome:
        self._expected_in_past_streams += self._expected_in_stream()
        jitter = self._jitter
        self._reset_stream()
        # Same source and path: keep the jitter estimate and adapt the delay from it
        # (but not the previous transit time: the timestamps restarted too).
        self._jitter = jitter
        self._anchors_in_stream = 1
        self._start_stream(packet, arrival)
        return PushOutcome.ACCEPTED

    def _needs_anchor(self, packet: RtpPacket, arrival: float) -> bool:
        if self._drained:
            return True
        if packet.marker and not self._slots:
            return True
        # Timestamp discontinuity: the old time base would hold the packet absurdly long,
        # or would have it played long ago.
        return abs(self._playout_time(packet.timestamp) - arrival) > self._horizon

    def _anchor(self, seq: int, packet: RtpPacket, arrival: float) -> None:
        assert self._next_seq is not None
        if self._anchors_in_stream:
            late = self._playout_time(packet.timestamp) < arrival
            if self._drained and late and not packet.marker:
                # It missed its slot in the old time base mid-talkspurt: the buffer ran dry.
                self._underruns += 1
            self._target_delay = self._adapted_delay()
        self._anchors_in_stream += 1
        self._reanchors += 1
        self._lost_at_anchor = 0
        self._fill_floor = self._next_seq
        if not any(s < seq and slot.payload is not None for s, slot in self._slots.items()):
            # Sequence numbers skipped across a pause are lost, but nothing is invented
            # for them: the gap plays as the silence it was.
            for missing in range(self._next_seq, seq):
                if self._slots.pop(missing, None) is None:
                    self._lost_at_anchor += 1
            self._lost += self._lost_at_anchor
            self._next_seq = max(self._next_seq, seq)
        self._anchor_arrival = arrival
        self._anchor_timestamp = packet.timestamp
        self._drained = False
        self._delivered_since_anchor = False

    def _adapted_delay(self) -> float:
        jitter_seconds = self._jitter / self.clock_rate
        return min(self.max_delay, max(self.min_delay, self._frame_duration + 3 * jitter_seconds))

    def _playout_time(self, timestamp: int) -> float:
        elapsed = _signed_delta(timestamp, self._anchor_timestamp, TIMESTAMP_MODULO)
        return self._anchor_arrival + elapsed / self.clock_rate + self._target_delay

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        if self._previous_arrival is not None:
            sent_apart = _signed_delta(timestamp, self._previous_timestamp, TIMESTAMP_MODULO)
            difference = (arrival - self._previous_arrival) * self.clock_rate - sent_apart
            self._jitter += (abs(difference) - self._jitter) * _JITTER_GAIN
        self._previous_arrival = arrival
        self._previous_timestamp = timestamp

    # ----------------------------------------------------------------- output

    def pop_due(self, now: float) -> list[bytes]:
        """Frames whose playout time has come, in sequence order (concealment included)."""
        frames: list[bytes] = []
        slots = self._slots
        while self._next_seq is not None:
            slot = slots.get(self._next_seq)
            if slot is not None:
                if slot.payload is None:
                    del slots[self._next_seq]
                    self._next_seq += 1
                    continue
                if slot.playout > now and not self.eager:
                    break
                del slots[self._next_seq]
                frames.append(slot.payload)
                self._remember_played(self._next_seq)
                self._next_seq += 1
                self._next_due = slot.playout + len(slot.payload) / self.clock_rate
                self._last_payload = slot.payload
                self._concealed_in_row = 0
                self._delivered += 1
                self._delivered_since_anchor = True
                continue
            if self._drained or self._next_due > now:
                break
            if not slots:
                # Nothing to bridge to: the talker paused or packets are late. Invent
                # nothing; the next packet re-anchors.
                self._drained = True
                break
            frames.append(self._concealment_frame())
            self._next_seq += 1
            self._lost += 1
            self._concealed += 1
            self._delivered_since_anchor = True
        return frames

    @property
    def next_due(self) -> float | None:
        """When `pop_due` next has something to hand out without another packet arriving
        (frames held behind a missing one wait until its playout time, then it is
        concealed); None while nothing is held. Lets a caller wake only for a gap instead
        of polling every frame."""
        if not self._slots or self._next_seq is None:
            return None
        slot = self._slots.get(self._next_seq)
        if slot is not None and slot.payload is not None and not self.eager:
            return slot.playout
        return self._next_due

    def _concealment_frame(self) -> bytes:
        previous = self._last_payload
        samples = len(previous) if previous else self.frame_samples
        self._next_due += samples / self.clock_rate
        self._concealed_in_row += 1
        if previous is not None and self._concealed_in_row == 1:
            return attenuate_mulaw(previous, _CONCEALMENT_GAIN)
        return bytes([MULAW_SILENCE]) * samples

    def _remember_played(self, seq: int) -> None:
        self._recent_played.append(seq)
        self._recent_played_set.add(seq)
        if len(self._recent_played) > _RECENT_PLAYED:
            self._recent_played_set.discard(self._recent_played.popleft())

    # ------------------------------------------------------------------ stats

    def _expected_in_stream(self) -> int:
        if self._next_seq is None:
            return 0
        return self._highest_seq - self._first_seq + 1

    @property
    def target_delay(self) -> float:
        return self._target_delay

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            received=self._received,
            duplicates=self._duplicates,
            late=self._late,
            too_early=self._too_early,
            lost=self._lost,
            concealed=self._concealed,
            expected=self._expected_in_past_streams + self._expected_in_stream(),
            delivered=self._delivered,
            jitter_ms=self._jitter / self.clock_rate * 1000,
            target_delay_ms=self._target_delay * 1000,
            underruns=self._underruns,
            reanchors=self._reanchors,
            buffered=len(self._slots),
        )
