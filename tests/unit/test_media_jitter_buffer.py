import random

import pytest

from sipagent.media.codec import attenuate_mulaw
from sipagent.media.jitter_buffer import JitterBuffer, PushOutcome
from sipagent.media.rtp import RtpPacket

FRAME = 0.02
SILENCE = b"\xff" * 160


def frame_payload(index: int) -> bytes:
    """A distinct, non-silent 160-byte mu-law frame per index."""
    return bytes([(index * 7) % 251]) + bytes((index + i) % 200 for i in range(159))


def make_packet(
    index: int,
    *,
    first_sequence: int = 1000,
    first_timestamp: int = 50_000,
    timestamp_offset: int = 0,
    marker: bool = False,
    ssrc: int = 7,
) -> RtpPacket:
    return RtpPacket(
        payload_type=0,
        sequence=(first_sequence + index) % 65536,
        timestamp=(first_timestamp + index * 160 + timestamp_offset) % 2**32,
        ssrc=ssrc,
        marker=marker,
        payload=frame_payload(index),
    )


def drain(buffer: JitterBuffer, start: float, end: float, step: float = FRAME) -> list[bytes]:
    """Pop on a 20 ms tick from start to end inclusive, like the session does."""
    frames: list[bytes] = []
    ticks = round((end - start) / step)
    for tick in range(ticks + 1):
        frames += buffer.pop_due(start + tick * step)
    return frames


def test_in_order_lossless_stream_is_delivered_identically() -> None:
    buffer = JitterBuffer()
    delivered: list[bytes] = []
    for index in range(500):
        now = 10.0 + index * FRAME
        assert buffer.push(make_packet(index), arrival=now) is PushOutcome.ACCEPTED
        delivered += buffer.pop_due(now)
    delivered += drain(buffer, 10.0 + 500 * FRAME, 10.0 + 520 * FRAME)
    assert delivered == [frame_payload(i) for i in range(500)]
    stats = buffer.stats
    assert (stats.lost, stats.concealed, stats.late, stats.duplicates) == (0, 0, 0, 0)
    assert stats.delivered == stats.received == stats.expected == 500
    assert stats.buffered == 0


def test_nothing_is_played_before_the_target_delay() -> None:
    buffer = JitterBuffer(initial_delay=0.04)
    buffer.push(make_packet(0), arrival=1.0)
    assert buffer.pop_due(1.0) == []
    assert buffer.pop_due(1.039) == []
    assert buffer.pop_due(1.04) == [frame_payload(0)]


def test_burst_arrival_is_paced_by_timestamps() -> None:
    buffer = JitterBuffer(initial_delay=0.04)
    for index in range(10):
        buffer.push(make_packet(index), arrival=1.0)
    assert buffer.pop_due(1.04) == [frame_payload(0)]
    assert buffer.pop_due(1.05) == []
    assert buffer.pop_due(1.10) == [frame_payload(i) for i in (1, 2, 3)]


def test_reordered_packets_are_delivered_in_sequence_order() -> None:
    buffer = JitterBuffer()
    order = [0, 2, 1, 3, 6, 4, 5, 7, 9, 8]
    for slot, index in enumerate(order):
        assert buffer.push(make_packet(index), arrival=1.0 + slot * FRAME) is PushOutcome.ACCEPTED
    frames = drain(buffer, 1.0, 1.5)
    assert frames == [frame_payload(i) for i in range(10)]
    assert buffer.stats.lost == 0


def test_first_packets_swapped_still_play_all() -> None:
    buffer = JitterBuffer()
    buffer.push(make_packet(1), arrival=1.0)
    assert buffer.push(make_packet(0), arrival=1.001) is PushOutcome.ACCEPTED
    buffer.push(make_packet(2), arrival=1.02)
    assert drain(buffer, 1.0, 1.2) == [frame_payload(i) for i in range(3)]
    assert buffer.stats.expected == 3


def test_duplicates_are_reported_buffered_or_played() -> None:
    buffer = JitterBuffer()
    buffer.push(make_packet(0), arrival=1.0)
    buffer.push(make_packet(1), arrival=1.02)
    assert buffer.push(make_packet(1), arrival=1.021) is PushOutcome.DUPLICATE
    frames = drain(buffer, 1.0, 1.1)
    assert buffer.push(make_packet(0), arrival=1.1) is PushOutcome.DUPLICATE
    assert frames == [frame_payload(0), frame_payload(1)]
    assert buffer.stats.duplicates == 2


def test_loss_is_concealed_by_attenuated_repeat_then_silence() -> None:
    buffer = JitterBuffer()
    for index in (0, 1, 5, 6):  # 2, 3, 4 are lost; 5 is already here when 2 is due
        buffer.push(make_packet(index), arrival=1.0 + index * 0.005)
    frames = drain(buffer, 1.0, 1.3)
    assert frames == [
        frame_payload(0),
        frame_payload(1),
        attenuate_mulaw(frame_payload(1), 0.5),
        SILENCE,
        SILENCE,
        frame_payload(5),
        frame_payload(6),
    ]
    stats = buffer.stats
    assert (stats.lost, stats.concealed, stats.expected, stats.delivered) == (3, 3, 7, 4)


def test_a_packet_after_its_slot_was_concealed_is_late() -> None:
    buffer = JitterBuffer()
    frames: list[bytes] = []
    for index in (0, 2, 3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    frames += drain(buffer, 1.0, 1.08)  # index 1 due at 1.06: concealed
    assert buffer.push(make_packet(1), arrival=1.081) is PushOutcome.LATE
    frames += drain(buffer, 1.1, 1.2)
    assert frames[0] == frame_payload(0)
    assert frames[1] == attenuate_mulaw(frame_payload(0), 0.5)
    assert frames[2:] == [frame_payload(2), frame_payload(3)]
    assert buffer.stats.late == 1


def test_sequence_wraparound_at_65535() -> None:
    buffer = JitterBuffer()
    order = [0, 1, 3, 2, 4, 5, 6]  # crosses 65535 -> 0, with a swap across it
    for slot, index in enumerate(order):
        outcome = buffer.push(make_packet(index, first_sequence=65533), arrival=1.0 + slot * FRAME)
        assert outcome is PushOutcome.ACCEPTED
    assert drain(buffer, 1.0, 1.3) == [frame_payload(i) for i in range(7)]
    assert buffer.stats.expected == 7
    assert buffer.stats.lost == 0


def test_timestamp_wraparound() -> None:
    buffer = JitterBuffer()
    for index in range(6):
        buffer.push(make_packet(index, first_timestamp=2**32 - 320), arrival=1.0 + index * FRAME)
    assert drain(buffer, 1.0, 1.3) == [frame_payload(i) for i in range(6)]


def test_silence_suppression_gap_is_not_loss_and_invents_nothing() -> None:
    buffer = JitterBuffer()
    frames: list[tuple[float, bytes]] = []
    # Talkspurt 1: indices 0-4. Then 2 s of silence not sent; talkspurt 2 has consecutive
    # sequence numbers but the timestamp jumps by 2 s.
    schedule = [(1.0 + i * FRAME, make_packet(i)) for i in range(5)]
    gap = 16000
    schedule += [
        (3.1 + i * FRAME, make_packet(5 + i, timestamp_offset=gap, marker=i == 0)) for i in range(5)
    ]
    arrivals = iter(schedule)
    pending = next(arrivals)
    for tick in range(200):
        now = 1.0 + tick * FRAME
        while pending is not None and pending[0] <= now:
            assert buffer.push(pending[1], pending[0]) is PushOutcome.ACCEPTED
            pending = next(arrivals, None)
        frames += [(now, frame) for frame in buffer.pop_due(now)]
    assert [frame for _, frame in frames] == [frame_payload(i) for i in range(10)]
    assert all(now < 1.2 for now, _ in frames[:5])
    assert all(now > 3.1 for now, _ in frames[5:])
    stats = buffer.stats
    assert (stats.lost, stats.concealed, stats.underruns) == (0, 0, 0)


def test_timestamp_jump_without_pause_plays_the_gap_as_nothing() -> None:
    buffer = JitterBuffer()
    buffer.push(make_packet(0), arrival=1.0)
    buffer.push(make_packet(1, timestamp_offset=800), arrival=1.0)  # 100 ms later in media time
    assert buffer.pop_due(1.04) == [frame_payload(0)]
    assert buffer.pop_due(1.16) == []
    assert buffer.pop_due(1.18) == [frame_payload(1)]
    assert buffer.stats.lost == 0


def test_stream_end_delivers_nothing_more() -> None:
    buffer = JitterBuffer()
    for index in range(3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    assert drain(buffer, 1.0, 5.0) == [frame_payload(i) for i in range(3)]
    assert buffer.stats.lost == 0


def test_underrun_reanchors_on_late_packet_without_concealment() -> None:
    buffer = JitterBuffer(initial_delay=0.04)
    frames: list[bytes] = []
    for index in range(3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
        frames += buffer.pop_due(1.0 + index * FRAME)
    # Packet 3 (due at 1.10) arrives 150 ms late; 4 and 5 follow right behind it.
    frames += drain(buffer, 1.06, 1.2)
    assert frames == [frame_payload(i) for i in range(3)]
    buffer.push(make_packet(3), arrival=1.21)
    buffer.push(make_packet(4), arrival=1.22)
    buffer.push(make_packet(5), arrival=1.23)
    frames += drain(buffer, 1.21, 1.5)
    assert frames == [frame_payload(i) for i in range(6)]
    stats = buffer.stats
    assert stats.underruns == 1
    assert (stats.lost, stats.concealed) == (0, 0)


def test_packets_lost_during_a_pause_are_counted_but_not_concealed() -> None:
    buffer = JitterBuffer()
    for index in range(3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    frames = drain(buffer, 1.0, 2.0)
    buffer.push(make_packet(10), arrival=2.0)  # 3..9 never arrived
    frames += drain(buffer, 2.0, 2.2)
    assert frames == [frame_payload(i) for i in (0, 1, 2, 10)]
    assert buffer.stats.lost == 7
    assert buffer.stats.concealed == 0
    assert buffer.stats.expected == 11


def jittery_talkspurt(
    buffer: JitterBuffer, start_index: int, start: float, count: int, jitter: float, seed: int
) -> None:
    """Packets delayed by up to `jitter`; the first one by the most, so that none is late
    (and no underrun re-anchors the buffer mid-talkspurt)."""
    rng = random.Random(seed)
    # The sender's clock keeps running through silence: media time tracks wall time.
    timestamp_offset = (round((start - 1.0) / FRAME) - start_index) * 160
    for offset in range(count):
        index = start_index + offset
        arrival = start + offset * FRAME + (rng.uniform(0, jitter) if offset else jitter)
        packet = make_packet(index, marker=offset == 0, timestamp_offset=timestamp_offset)
        buffer.push(packet, arrival=arrival)
        buffer.pop_due(arrival)


def test_target_delay_adapts_to_jitter_only_at_talkspurt_start() -> None:
    buffer = JitterBuffer(initial_delay=0.04, min_delay=0.02, max_delay=0.2)
    jittery_talkspurt(buffer, 0, 1.0, 50, jitter=0.0, seed=1)
    drain(buffer, 2.0, 2.5)
    # Calm talkspurt: the next anchor uses 20 ms + 3 * ~0 jitter.
    jittery_talkspurt(buffer, 50, 3.0, 50, jitter=0.0, seed=2)
    calm_delay = buffer.stats.target_delay_ms
    assert calm_delay == pytest.approx(20, abs=1)
    drain(buffer, 4.0, 4.5)

    jittery_talkspurt(buffer, 100, 5.0, 100, jitter=0.06, seed=3)
    assert buffer.stats.underruns == 0
    during_jitter = buffer.stats.target_delay_ms
    assert during_jitter == pytest.approx(calm_delay)  # not changed mid-talkspurt
    assert buffer.stats.jitter_ms > 10
    drain(buffer, 7.5, 8.0)

    jittery_talkspurt(buffer, 200, 9.0, 5, jitter=0.0, seed=4)
    raised = buffer.stats.target_delay_ms
    assert raised > calm_delay + 30
    assert raised <= 200


def test_target_delay_is_clamped_to_max() -> None:
    buffer = JitterBuffer(max_delay=0.1)
    jittery_talkspurt(buffer, 0, 1.0, 100, jitter=0.5, seed=5)
    drain(buffer, 4.0, 5.0)
    jittery_talkspurt(buffer, 100, 6.0, 2, jitter=0.0, seed=6)
    assert buffer.stats.target_delay_ms == pytest.approx(100)


def test_jitter_estimate_is_zero_for_perfect_stream_and_grows_with_jitter() -> None:
    buffer = JitterBuffer()
    for index in range(100):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    assert buffer.stats.jitter_ms == pytest.approx(0, abs=1e-6)
    # Alternate 0 / 10 ms extra delay: |D| = 10 ms each packet, so J converges to 10 ms.
    for index in range(100, 400):
        extra = 0.01 if index % 2 else 0.0
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME + extra)
    assert buffer.stats.jitter_ms == pytest.approx(10, abs=0.1)


def test_packet_beyond_capacity_is_too_early() -> None:
    buffer = JitterBuffer(capacity_frames=50)
    buffer.push(make_packet(0), arrival=1.0)
    assert buffer.push(make_packet(49), arrival=1.0) is PushOutcome.ACCEPTED
    assert buffer.push(make_packet(50), arrival=1.0) is PushOutcome.TOO_EARLY
    assert buffer.stats.too_early == 1


def test_source_restarting_its_sequence_numbers_is_followed() -> None:
    buffer = JitterBuffer()
    frames: list[bytes] = []
    for index in range(3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    frames += drain(buffer, 1.0, 1.1)
    restarted = [make_packet(i, first_sequence=30_000, first_timestamp=9) for i in range(3, 6)]
    assert buffer.push(restarted[0], arrival=1.12) is PushOutcome.TOO_EARLY
    assert buffer.push(restarted[1], arrival=1.14) is PushOutcome.ACCEPTED
    assert buffer.push(restarted[2], arrival=1.16) is PushOutcome.ACCEPTED
    frames += drain(buffer, 1.12, 1.5)
    assert frames == [frame_payload(i) for i in (0, 1, 2, 4, 5)]


def test_reset_starts_a_new_stream_and_keeps_counters() -> None:
    buffer = JitterBuffer(initial_delay=0.04)
    for index in range(3):
        buffer.push(make_packet(index), arrival=1.0 + index * FRAME)
    buffer.reset()
    assert buffer.stats.buffered == 0
    other = [make_packet(i, first_sequence=7, first_timestamp=123, ssrc=99) for i in range(3)]
    for slot, item in enumerate(other):
        assert buffer.push(item, arrival=2.0 + slot * FRAME) is PushOutcome.ACCEPTED
    assert buffer.pop_due(2.039) == []
    assert drain(buffer, 2.04, 2.3) == [frame_payload(i) for i in range(3)]
    assert buffer.stats.received == 6
    assert buffer.stats.expected == 6


def test_non_audio_packets_occupy_sequence_numbers_without_loss() -> None:
    buffer = JitterBuffer()
    buffer.push(make_packet(0), arrival=1.0)
    event = RtpPacket(0, 1001, 50_160, 7, False, b"\x01\x80\x00\xa0")
    assert buffer.push_non_audio(event, arrival=1.02) is PushOutcome.ACCEPTED
    assert buffer.push_non_audio(event, arrival=1.021) is PushOutcome.DUPLICATE
    buffer.push(make_packet(2), arrival=1.04)
    assert drain(buffer, 1.0, 1.3) == [frame_payload(0), frame_payload(2)]
    assert buffer.stats.lost == 0


def test_stats_fields() -> None:
    buffer = JitterBuffer(initial_delay=0.06)
    buffer.push(make_packet(0), arrival=1.0)
    buffer.push(make_packet(1), arrival=1.02)
    stats = buffer.stats
    assert stats.received == 2
    assert stats.buffered == 2
    assert stats.target_delay_ms == pytest.approx(60)
    assert stats.expected == 2


def test_invalid_delays_rejected() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_delay=0.3, max_delay=0.2)


def test_marker_with_empty_buffer_reanchors_the_time_base() -> None:
    buffer = JitterBuffer(initial_delay=0.04, min_delay=0.02)
    buffer.push(make_packet(0), arrival=1.0)
    assert drain(buffer, 1.0, 1.04) == [frame_payload(0)]
    # Same media time as the old base predicts (due 1.06), but a new talkspurt:
    # it is timed from its own arrival with the adapted (20 ms) delay.
    buffer.push(make_packet(1, marker=True), arrival=1.05)
    assert buffer.pop_due(1.06) == []
    assert buffer.pop_due(1.07) == [frame_payload(1)]
    assert buffer.stats.reanchors == 2


def test_timestamp_discontinuity_reanchors_instead_of_waiting_for_it() -> None:
    buffer = JitterBuffer(initial_delay=0.04, min_delay=0.02)
    buffer.push(make_packet(0), arrival=1.0)
    buffer.push(make_packet(1, timestamp_offset=8000 * 3600), arrival=1.02)  # "an hour later"
    assert drain(buffer, 1.0, 1.1) == [frame_payload(0), frame_payload(1)]


def test_eager_mode_delivers_in_sequence_frames_at_once_and_waits_only_for_gaps():
    buffer = JitterBuffer(eager=True, initial_delay=0.04)
    first = RtpPacket(0, 100, 16000, 1, True, b"\x01" * 160)
    buffer.push(first, arrival=10.0)
    assert buffer.pop_due(10.0) == [b"\x01" * 160]  # no playout delay
    third = RtpPacket(0, 102, 16320, 1, False, b"\x03" * 160)
    buffer.push(third, arrival=10.04)
    assert buffer.pop_due(10.04) == []  # 101 is missing: wait for it (reordering)
    second = RtpPacket(0, 101, 16160, 1, False, b"\x02" * 160)
    buffer.push(second, arrival=10.05)
    assert buffer.pop_due(10.05) == [b"\x02" * 160, b"\x03" * 160]
    fifth = RtpPacket(0, 104, 16640, 1, False, b"\x05" * 160)
    buffer.push(fifth, arrival=10.08)
    assert buffer.pop_due(10.08) == []
    # 103 never comes: concealed once its playout time (plus the delay) has passed
    frames = buffer.pop_due(10.2)
    assert len(frames) == 2 and frames[1] == b"\x05" * 160 and buffer.stats.lost == 1


def test_next_due_says_when_frames_held_behind_a_gap_can_go() -> None:
    eager = JitterBuffer(eager=True, initial_delay=0.04)
    assert eager.next_due is None  # nothing held
    eager.push(make_packet(0), arrival=10.0)
    assert eager.pop_due(10.0) == [frame_payload(0)]
    assert eager.next_due is None  # delivered at once: nothing to wake for
    eager.push(make_packet(2), arrival=10.04)
    assert eager.pop_due(10.04) == []
    due = eager.next_due  # 1 is missing: its playout time
    assert due is not None and 10.04 < due <= 10.0 + 0.02 + 0.04 + 1e-9
    assert eager.pop_due(due - 0.001) == []  # not before it...
    frames = eager.pop_due(due)  # ...then 1 is concealed and 2 goes out behind it
    assert len(frames) == 2 and frames[1] == frame_payload(2)
    assert eager.stats.concealed == 1 and eager.next_due is None

    paced = JitterBuffer(initial_delay=0.04)
    paced.push(make_packet(0), arrival=10.0)
    assert paced.pop_due(10.0) == []
    assert paced.next_due == pytest.approx(10.04)  # the held frame's playout time
    assert paced.pop_due(paced.next_due) == [frame_payload(0)]
