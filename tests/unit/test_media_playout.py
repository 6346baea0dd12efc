import itertools
import random
import struct
from dataclasses import dataclass

import pytest

from sipagent.media.playout import FlushResult, FramePacer, PacerTick, PlayoutQueue

SILENCE = b"\xff" * 160


def pattern(frames: int) -> bytes:
    return bytes((i * 13 + 1) % 255 for i in range(frames * 160))


def test_empty_queue_yields_silence_frames() -> None:
    queue = PlayoutQueue()
    for _ in range(3):
        frame = queue.next_frame()
        assert (frame.payload, frame.marker, frame.voiced) == (SILENCE, False, False)
    assert queue.sent_audio_bytes == 0
    assert not queue.is_playing


def test_alaw_silence_byte() -> None:
    assert PlayoutQueue(silence_byte=0xD5).next_frame().payload == b"\xd5" * 160


def test_audio_is_cut_into_frames_with_marker_on_talkspurt_start() -> None:
    queue = PlayoutQueue()
    audio = pattern(3)
    queue.enqueue(audio[:100])
    queue.enqueue(audio[100:])  # chunk boundaries do not matter
    frames = [queue.next_frame() for _ in range(5)]
    assert [f.payload for f in frames[:3]] == [audio[i * 160 : (i + 1) * 160] for i in range(3)]
    assert [f.marker for f in frames] == [True, False, False, False, False]
    assert [f.voiced for f in frames] == [True, True, True, False, False]
    queue.enqueue(pattern(1))
    assert not queue.next_frame().voiced  # a lone frame waits a tick: slack for a live source
    assert queue.next_frame().marker  # a new talkspurt after silence


def test_partial_tail_is_padded_with_silence() -> None:
    queue = PlayoutQueue()
    queue.enqueue(b"\x01" * 200)
    queue.end_talkspurt()  # a whole utterance: nothing to wait for
    assert queue.next_frame().payload == b"\x01" * 160
    tail = queue.next_frame()
    assert tail.payload == b"\x01" * 40 + b"\xff" * 120
    assert tail.voiced and not tail.marker
    assert queue.sent_audio_bytes == 200  # padding is not audio
    assert queue.sent_audio_ms == pytest.approx(25)


def test_queue_accounting() -> None:
    queue = PlayoutQueue()
    queue.enqueue(pattern(10))
    assert queue.queued_bytes == 1600
    assert queue.queued_ms == pytest.approx(200)
    assert queue.is_playing
    for _ in range(4):
        queue.next_frame()
    assert queue.queued_ms == pytest.approx(120)
    assert queue.sent_audio_ms == pytest.approx(80)


def test_flush_drops_everything_and_reports_it() -> None:
    queue = PlayoutQueue()
    queue.enqueue(pattern(250))  # 5 s
    for _ in range(50):
        queue.next_frame()
    result = queue.flush()
    assert result == FlushResult(dropped_bytes=200 * 160, dropped_ms=pytest.approx(4000))
    assert queue.queued_bytes == 0
    assert not queue.is_playing
    assert queue.next_frame().payload == SILENCE
    assert queue.sent_audio_ms == pytest.approx(1000)
    assert queue.flush() == FlushResult(0, 0.0)


def test_audio_after_flush_starts_a_new_talkspurt() -> None:
    queue = PlayoutQueue()
    queue.enqueue(pattern(5))
    queue.next_frame()
    queue.flush()
    queue.enqueue(pattern(2))
    assert queue.next_frame().marker


def test_pacer_deadlines_are_absolute() -> None:
    pacer = FramePacer(start=100.0, interval=0.02)
    assert pacer.deadline_of(0) == 100.0
    assert pacer.deadline_of(50) == pytest.approx(101.0)
    assert pacer.next_deadline == 100.0
    assert pacer.due_frames(99.99) == PacerTick(0, 0)
    assert pacer.due_frames(100.0) == PacerTick(1, 0)
    assert pacer.due_frames(100.0) == PacerTick(0, 0)
    assert pacer.next_deadline == pytest.approx(100.02)
    assert pacer.due_frames(100.045) == PacerTick(2, 0)
    assert pacer.next_deadline == pytest.approx(100.06)


def test_pacer_exactly_on_deadline_counts_it() -> None:
    pacer = FramePacer(start=0.1, interval=0.02)
    for index in range(1000):
        assert pacer.due_frames(pacer.deadline_of(index)) == PacerTick(1, 0)


def test_pacer_does_not_drift_over_10000_frames() -> None:
    rng = random.Random(7)
    start = 5000.0
    pacer = FramePacer(start=start, interval=0.02)
    sent = 0
    now = start
    for _ in range(10_000):
        # Every wake-up oversleeps by up to 3 ms; lateness must not accumulate.
        now = pacer.next_deadline + rng.uniform(0, 0.003)
        tick = pacer.due_frames(now)
        assert tick == PacerTick(1, 0)
        sent += tick.send
    assert sent == 10_000
    assert pacer.next_deadline == start + 10_000 * 0.02
    assert now - pacer.deadline_of(9_999) < 0.003


def test_pacer_catches_up_small_stalls_by_bursting() -> None:
    pacer = FramePacer(start=0.0, interval=0.02, max_catch_up_frames=5)
    pacer.due_frames(0.0)
    assert pacer.due_frames(0.1) == PacerTick(send=5, skip=0)  # deadlines 0.02..0.10
    assert pacer.frames_sent == 6


def test_pacer_skips_instead_of_bursting_after_long_stall() -> None:
    pacer = FramePacer(start=0.0, interval=0.02, max_catch_up_frames=5)
    pacer.due_frames(0.0)
    tick = pacer.due_frames(0.5)  # deadlines 0.02..0.50 are due: 25 frames
    assert tick == PacerTick(send=1, skip=24)
    assert pacer.frames_skipped == 24
    assert pacer.next_deadline == pytest.approx(0.52)
    assert pacer.due_frames(0.52) == PacerTick(1, 0)


def test_pacer_validates_arguments() -> None:
    with pytest.raises(ValueError):
        FramePacer(start=0.0, interval=0)
    with pytest.raises(ValueError):
        FramePacer(start=0.0, max_catch_up_frames=0)


def test_pause_holds_the_queue_and_resume_continues_with_a_new_talkspurt():
    queue = PlayoutQueue()
    queue.enqueue(bytes(range(1, 161)) * 3)
    first = queue.next_frame()
    queue.pause()
    held = [queue.next_frame() for _ in range(5)]
    assert all(not frame.voiced and frame.payload == b"\xff" * 160 for frame in held)
    assert queue.queued_bytes == 320 and queue.sent_audio_bytes == 160  # nothing consumed
    queue.resume()
    second = queue.next_frame()
    assert first.marker and second.marker and second.payload == bytes(range(1, 161))
    queue.pause()
    queue.flush()
    assert not queue.paused  # a flush ends the pause: the next reply plays normally


# -- a talkspurt starts when its audio arrives, not at the next tick -----------------------------


def test_talkspurt_ready_only_on_a_quiet_line_with_two_whole_frames() -> None:
    queue = PlayoutQueue()
    assert not queue.talkspurt_ready  # nothing queued
    queue.enqueue(pattern(1)[:100])
    assert not queue.talkspurt_ready  # less than a frame: sending now would pad it with silence
    queue.enqueue(pattern(1))
    assert not queue.talkspurt_ready  # one frame: the next tick could find the queue empty
    queue.enqueue(pattern(1))
    assert queue.talkspurt_ready
    assert queue.next_frame().marker
    assert queue.queued_bytes >= 160
    assert not queue.talkspurt_ready  # mid-talkspurt: the tick keeps the pace
    queue.pause()
    queue.flush()
    queue.enqueue(pattern(2))
    queue.pause()
    assert not queue.talkspurt_ready  # paused for a possible barge-in: stay quiet
    queue.resume()
    assert queue.talkspurt_ready


def test_send_now_takes_the_next_slot_and_moves_the_schedule_earlier() -> None:
    pacer = FramePacer(start=100.0, interval=0.02)
    assert pacer.due_frames(100.0) == PacerTick(1, 0)  # silence at 100.000
    assert pacer.send_now(100.007)  # audio arrives 7 ms later: out at once, not at 100.020
    assert pacer.frames_sent == 2
    assert pacer.ahead == pytest.approx(0.013)
    assert pacer.next_deadline == pytest.approx(100.027)  # the pace continues from there
    assert pacer.due_frames(100.020) == PacerTick(0, 0)  # the old deadline sends nothing
    assert pacer.due_frames(100.0269) == PacerTick(0, 0)
    assert pacer.due_frames(100.0271) == PacerTick(1, 0)
    assert pacer.due_frames(100.0471) == PacerTick(1, 0)


def test_send_now_leaves_a_slot_that_is_due_anyway_to_the_tick() -> None:
    pacer = FramePacer(start=100.0, interval=0.02)
    pacer.due_frames(100.0)
    assert not pacer.send_now(100.0195)  # 0.5 ms early: not worth a schedule change
    assert not pacer.send_now(100.025)  # already late: the tick is about to send it
    assert pacer.ahead == 0 and pacer.frames_sent == 1
    assert pacer.next_deadline == pytest.approx(100.02)


def test_give_back_puts_the_rtp_clock_back_on_the_wall_clock() -> None:
    # Frame n carries RTP time n * 20 ms; after any number of early talkspurts and their give
    # back, frame n is due at exactly start + n * 20 ms again: no drift over a long call. The
    # lead goes back 1 ms per silent frame, so no interval on the wire is over 21 ms (given
    # back at once, the interval was 20 ms + the lead: up to 39 ms at every reply's end).
    rng = random.Random(3)
    pacer = FramePacer(start=0.0, interval=0.02, give_back_step=0.001)
    now = 0.0
    for _ in range(200):  # 200 replies
        for _ in range(rng.randint(1, 30)):  # silence between them
            previous, now = now, pacer.next_deadline
            pacer.due_frames(now)
            pacer.give_back()
            assert now - previous <= 0.021 + 1e-9
        pacer.send_now(now + rng.uniform(0.002, 0.019))
        assert 0 <= pacer.ahead <= 0.02
        for _ in range(rng.randint(5, 200)):  # the reply
            now = pacer.next_deadline
            pacer.due_frames(now)
    for _ in range(20):  # enough silence to give back a whole frame
        now = pacer.next_deadline
        pacer.due_frames(now)
        pacer.give_back()
    assert pacer.ahead == 0
    assert pacer.next_deadline == pytest.approx(pacer.next_index * 0.02)
    assert pacer.frames_skipped == 0


def test_the_queue_tells_an_underrun_from_the_end_of_an_utterance() -> None:
    queue = PlayoutQueue()
    queue.enqueue(word(1) + word(2))
    assert queue.next_frame().voiced and queue.next_frame().voiced
    gap = queue.next_frame()
    assert not gap.voiced and gap.underrun  # the producer fell behind
    assert not queue.next_frame().underrun  # said once, at the talkspurt's end

    queue.enqueue(word(3))
    queue.end_talkspurt()
    assert queue.next_frame().voiced
    assert not queue.next_frame().underrun  # the utterance ended: no underrun

    queue.enqueue(word(4))
    queue.end_talkspurt()
    queue.enqueue(word(5))  # more audio after the end: the utterance goes on after all
    queue.next_frame(), queue.next_frame()
    assert queue.next_frame().underrun

    queue.enqueue(word(6) * 3)
    queue.next_frame()
    queue.pause()  # a possible barge-in: quiet on purpose
    assert not queue.next_frame().underrun
    queue.resume()
    queue.next_frame()
    queue.flush()
    assert not queue.next_frame().underrun
    queue.end_talkspurt()  # nothing queued: nothing to mark
    queue.enqueue(word(7) * 2)
    queue.next_frame(), queue.next_frame()
    assert queue.next_frame().underrun


def test_give_back_at_once_after_an_underrun() -> None:
    pacer = FramePacer(start=0.0, interval=0.02)
    pacer.due_frames(0.0)
    assert pacer.send_now(0.004)
    pacer.give_back()
    assert pacer.ahead == pytest.approx(0.015)  # 1 ms per silent frame by default
    pacer.give_back(at_once=True)
    assert pacer.ahead == 0
    assert pacer.next_deadline == pytest.approx(0.04)


@pytest.mark.parametrize("whole_utterances", [True, False])
def test_replies_end_without_a_long_interval_but_underruns_give_the_lead_back_at_once(
    whole_utterances: bool,
) -> None:
    # Replies (a fast producer: each reply queued at once) at random phases of the frame
    # clock, so each starts early by up to a frame. Said to be whole, each reply's lead goes
    # back 1 ms per silent frame: no interval on the wire over 21 ms. Not said to be whole,
    # the silence after it is taken for an underrun: the lead goes back at once, in one
    # interval of 20 ms + the lead (what every reply's end looked like before).
    rng = random.Random(7)
    chunks = [(0.5 + i * 1.3 + rng.uniform(0, 0.02), word(i) * 25) for i in range(30)]
    line = run_line(chunks, until=40.0, whole_utterances=whole_utterances)
    times = [frame.at for frame in line.sent]
    longest = max(after - before for before, after in itertools.pairwise(times))
    if whole_utterances:
        assert longest <= 0.021 + 1e-9
    else:
        assert longest > 0.03
    assert len(line.voiced) == 30 * 25 and line.pacer.frames_skipped == 0
    # Either way the RTP clock ends on the wall clock: no drift over 30 replies.
    assert line.pacer.ahead == 0
    assert line.pacer.next_deadline == pytest.approx(line.pacer.next_index * 0.02)


def test_send_now_right_after_give_back_never_stacks_leads() -> None:
    pacer = FramePacer(start=0.0, interval=0.02, give_back_step=0.02)
    pacer.due_frames(0.0)
    assert pacer.send_now(0.005)  # 15 ms early
    pacer.due_frames(pacer.next_deadline)  # the talkspurt's second frame
    pacer.due_frames(pacer.next_deadline)  # silence: give the 15 ms back
    pacer.give_back()
    assert pacer.next_deadline == pytest.approx(0.08)  # slot 4 is back on the wall clock
    # Audio 1 ms after that silent frame: its slot is 34 ms away; taking it now would put the
    # RTP clock 34 ms ahead. It waits for the deadline instead.
    assert not pacer.send_now(0.046)
    assert pacer.send_now(0.065)  # 15 ms early: fine
    assert pacer.ahead == pytest.approx(0.015)


def test_a_lead_not_yet_given_back_bounds_the_next_one() -> None:
    pacer = FramePacer(start=0.0, interval=0.02, give_back_step=0.001)
    pacer.due_frames(0.0)
    assert pacer.send_now(0.004)  # 16 ms ahead
    for _ in range(3):  # three silent frames give 3 ms back
        pacer.due_frames(pacer.next_deadline)
        pacer.give_back()
    assert pacer.ahead == pytest.approx(0.013)
    deadline = pacer.next_deadline
    assert not pacer.send_now(deadline - 0.010)  # 13 + 10 ms would be over a frame ahead
    assert pacer.send_now(deadline - 0.005)  # 13 + 5 ms is not
    assert pacer.ahead == pytest.approx(0.018)


@dataclass(frozen=True)
class Sent:
    at: float  # send time
    slot: int  # RTP frame slot (timestamp / 160)
    payload: bytes
    voiced: bool


@dataclass
class Line:
    sent: list[Sent]
    queue: PlayoutQueue
    pacer: FramePacer

    @property
    def voiced(self) -> list[Sent]:
        return [frame for frame in self.sent if frame.voiced]


def run_line(
    chunks: list[tuple[float, bytes]],
    until: float,
    stalls: tuple[tuple[float, float], ...] = (),
    whole_utterances: bool = False,
) -> Line:
    """A PlayoutQueue and FramePacer driven as RtpSession drives them, in virtual time: the
    media clock's pass runs at the deadline it last saw (or when a stall, `(from, to)`,
    lets it); skipped slots are reported to the queue; audio (`chunks`: bytes at a time)
    may start a talkspurt at once. Audio arriving during a stall is handled when it ends,
    after the pass (as on the event loop: the app plays it after the pass's timer ran).
    `whole_utterances`: each chunk is a complete utterance (the producer says so, as the
    speaker does at a reply's end)."""
    queue, pacer = PlayoutQueue(), FramePacer(start=0.0, interval=0.02)
    sent: list[Sent] = []
    slot = 0
    wake = 0.0

    def unstalled(at: float) -> float:
        return next((end for begin, end in stalls if begin <= at < end), at)

    pending = sorted((unstalled(at), index, audio) for index, (at, audio) in enumerate(chunks))

    def send(now: float) -> None:
        nonlocal slot
        frame = queue.next_frame()
        sent.append(Sent(now, slot, frame.payload, frame.voiced))
        if not frame.voiced and pacer.ahead:
            pacer.give_back(at_once=frame.underrun)
        slot += 1

    while wake < until:
        if pending and pending[0][0] < wake:
            now, _, audio = pending.pop(0)
            queue.enqueue(audio)
            if whole_utterances:
                queue.end_talkspurt()
            if queue.talkspurt_ready and pacer.send_now(now):
                send(now)
            continue
        tick = pacer.due_frames(wake)
        if tick.skip:
            slot += tick.skip
            queue.fell_behind(tick.skip)
        for _ in range(tick.send):
            send(wake)
        wake = unstalled(max(wake, pacer.next_deadline))
    return Line(sent, queue, pacer)


def drive_line(
    chunks: list[tuple[float, int]], until: float
) -> tuple[list[tuple[float, int, float]], int]:
    """`run_line` with `frames` of audio at each time. Returns, per voiced frame, (send time,
    RTP slot, the earliest it could have gone out: its arrival, or 20 ms after the frame
    before it), and the number of skipped slots."""
    earliest: list[float] = []
    for now, frames in sorted(chunks):
        for _ in range(frames):
            earliest.append(max(now, earliest[-1] + 0.02) if earliest else now)
    line = run_line([(now, pattern(frames)) for now, frames in chunks], until)
    voiced = [(frame.at, frame.slot) for frame in line.voiced]
    return [(t, n, e) for (t, n), e in zip(voiced, earliest, strict=True)], (
        line.pacer.frames_skipped
    )


@pytest.mark.parametrize(
    ("chunk_frames", "every"),
    [(5, 0.105), (3, 0.0625), (5, 0.1), (2, 0.039), (10, 0.25), (1, 0.02), (4, 0.06)],
)
def test_a_producer_near_real_time_keeps_the_rtp_clock_within_a_frame(chunk_frames, every):
    # Chunks a little slower or faster than real time, with jitter: the queue runs dry and
    # refills over and over, so early starts and give-backs alternate.
    rng = random.Random(chunk_frames)
    chunks = [(0.3 + i * every + rng.uniform(0, 0.004), chunk_frames) for i in range(60)]
    voiced, skipped = drive_line(chunks, until=0.3 + 60 * max(every, chunk_frames * 0.02) + 1)
    assert len(voiced) == 60 * chunk_frames  # every frame played
    assert skipped == 0
    for sent_at, slot, earliest in voiced:
        assert -1e-9 <= slot * 0.02 - sent_at <= 0.02 + 1e-9  # RTP time leads by <= a frame
        assert sent_at <= earliest + 0.04 + 1e-9  # no frame waits more than two ticks
    for (before, _, _), (after, _, _) in itertools.pairwise(voiced):
        assert after - before >= 0.019  # never a burst


@pytest.mark.parametrize("phase", [0.0005, 0.002, 0.01, 0.0195])
def test_a_live_source_with_jitter_is_echoed_without_a_hole(phase: float) -> None:
    # An echo: one frame every 20 ms, arriving `phase` before a tick, each up to 3 ms late or
    # early. Its talkspurt starts with a frame in hand, so no frame misses its slot; started
    # on the lone first frame, a frame arriving 0.5 ms before its tick missed it whenever it
    # came a little late (one silent frame inside the echo: a flaky echo test).
    rng = random.Random(int(phase * 1e4))
    jitter = [0.0] + [rng.uniform(-0.003, 0.003) for _ in range(149)]  # the first on time
    chunks = [(0.4 + 0.02 * i - phase + jitter[i], word(i)) for i in range(150)]
    line = run_line(chunks, until=4.0)
    voiced_at = [index for index, frame in enumerate(line.sent) if frame.voiced]
    assert [line.sent[i].payload for i in voiced_at] == [word(i) for i in range(150)]
    assert voiced_at[-1] - voiced_at[0] == 149, "silence inside the echo"
    assert line.pacer.frames_skipped == 0


def test_a_fast_producer_whose_first_chunk_is_one_frame_still_starts_at_once() -> None:
    # TTS streams faster than real time in uneven chunks (the fake ElevenLabs: 20, 30 and
    # 40 ms); a tick between its first chunk (one frame) and the rest must not hold the reply
    # for another tick: two and a half frames in 1 ms is no live source.
    queue = PlayoutQueue()
    queue.enqueue(word(0))
    assert not queue.talkspurt_ready
    assert not queue.next_frame().voiced  # the tick holds the lone frame
    queue.enqueue(word(1) + word(2)[:80])
    assert not queue.talkspurt_ready  # two frames: maybe a live source's second one
    queue.enqueue(word(2)[80:] + word(3) + word(4)[:80])
    assert queue.talkspurt_ready  # faster than real time: start it now (send_now)
    assert queue.next_frame().marker


# -- after a stall: speech intact, no burst, and the delay shed in the next pause ---------------

QUIET = bytes([0xF0, 0x70, 0xE8, 0x68]) * 40  # low noise (peak 244 of 32767): a pause


def word(index: int) -> bytes:
    """A loud 160-byte frame that says which one it is."""
    return struct.pack("!H", index) + bytes((index * 7 + i * 13) % 0x60 for i in range(158))


def test_skipped_slots_are_made_up_by_shedding_quiet_frames_only() -> None:
    queue = PlayoutQueue()
    queue.enqueue(word(0) + QUIET + QUIET + word(1) + QUIET + word(2))
    queue.fell_behind(2)
    assert queue.next_frame().payload == word(0)  # speech is never shed
    assert queue.next_frame().payload == word(1)  # the two quiet frames were
    assert (queue.lag_frames, queue.frames_shed) == (0, 2)
    assert queue.next_frame().payload == QUIET  # nothing owed any more: pauses play again
    assert queue.sent_audio_ms == pytest.approx(100)  # shed audio counts as consumed
    queue.fell_behind(1000)
    assert queue.lag_frames == 50  # at most a second is owed


def test_a_paused_queue_sheds_nothing_and_a_flush_forgets_the_lag() -> None:
    queue = PlayoutQueue()
    queue.enqueue(QUIET * 3)
    queue.fell_behind(2)
    queue.pause()
    assert not queue.next_frame().voiced
    assert queue.queued_bytes == 480 and queue.frames_shed == 0
    queue.resume()
    assert queue.next_frame().payload == QUIET  # two shed, the third sent
    assert queue.frames_shed == 2
    queue.enqueue(QUIET * 2)
    queue.fell_behind(2)
    queue.flush()  # the delay was in the audio that was dropped
    queue.enqueue(QUIET * 2)
    assert queue.next_frame().payload == QUIET


def reply_with_pauses(sentences: int, words: int, pause_frames: int) -> list[bytes]:
    frames: list[bytes] = []
    for sentence in range(sentences):
        frames += [word(sentence * 1000 + i) for i in range(words)] + [QUIET] * pause_frames
    return frames


def test_a_300_ms_stall_mid_reply_keeps_every_word_and_sheds_its_delay_in_the_next_pause():
    frames = reply_with_pauses(sentences=3, words=50, pause_frames=20)
    chunks = [(0.11, b"".join(frames))]  # a fast producer (TTS): the whole reply at once
    steady = run_line(chunks, until=5.0)
    stalled = run_line(chunks, until=5.0, stalls=((0.5, 0.8),))

    words = [f for f in frames if f != QUIET]
    assert [s.payload for s in stalled.voiced if s.payload != QUIET] == words  # all, in order
    # The reply started at 0.11 (send_now), so slots fall on 0.11 + k * 20 ms: those of 0.51
    # to 0.79 are due when the stall ends at 0.80; one is sent, the 14 before it given up.
    assert stalled.pacer.frames_skipped == 14
    # No burst: one frame when the stall ends (the slot of 0.79, 10 ms late), the next on its
    # own deadline.
    assert [s.at for s in stalled.sent if 0.5 <= s.at < 0.85] == pytest.approx([0.8, 0.81, 0.83])
    slot_of = {s.payload: s.slot for s in steady.voiced if s.payload != QUIET}
    late = [s.slot - slot_of[s.payload] for s in stalled.voiced if s.payload in slot_of]
    # The rest of the first sentence is 14 frames late; after its pause, on time again.
    assert set(late[:20]) == {0}
    assert set(late[20:50]) == {14}
    assert set(late[50:]) == {0}
    assert stalled.queue.frames_shed == 14 and stalled.queue.lag_frames == 0


def test_an_echo_is_back_in_step_after_the_pause_following_each_stall() -> None:
    # A live producer (the echo app): one frame every 20 ms, 5 ms after each slot, with one
    # second of speech and half a second of pause, and two 300 ms stalls in speech.
    pattern_of_talk = ([True] * 50 + [False] * 25) * 4
    chunks = [
        (0.005 + 0.02 * i, word(i) if talking else QUIET)
        for i, talking in enumerate(pattern_of_talk)
    ]
    stalls = ((0.4, 0.7), (1.9, 2.2))
    line = run_line(chunks, until=7.0, stalls=stalls)

    arrival = {audio: at for at, audio in chunks if audio != QUIET}
    delay = {
        frame.payload: frame.at - arrival[frame.payload]
        for frame in line.voiced
        if frame.payload in arrival
    }
    assert len(delay) == 200  # every word echoed
    for index, talking in enumerate(pattern_of_talk):
        if not talking:
            continue
        # Its slot without a stall: the next tick, plus the frame held at each talkspurt's
        # start (the slack a live source gets against jitter).
        due_at = 0.005 + 0.02 * index + 0.035
        in_speech_after_stall = any(
            due_at >= begin and index // 75 == int(begin / 1.5)  # same talk spell (1.5 s)
            for begin, _ in stalls
        )
        expected = 0.315 if in_speech_after_stall else 0.035
        assert delay[word(index)] == pytest.approx(expected, abs=0.021), index
    assert max(delay.values()) < 0.34  # the two stalls never add up
    assert line.queue.lag_frames == 0
