import asyncio
import random
import threading
import time
from collections.abc import Callable

import pytest

from sipagent.media.clock import (
    CATCH_UP_AFTER,
    THREAD_GRID,
    LatenessHistogram,
    MediaClock,
    MediaSchedule,
    ThreadedMediaClock,
)
from sipagent.media.playout import FramePacer

# -- MediaSchedule: who is due, in which order, and when the next one is ------------------------


def test_a_pass_serves_only_the_due_members_earliest_first() -> None:
    schedule: MediaSchedule[str] = MediaSchedule()
    for name, deadline in (("c", 0.013), ("a", 0.004), ("b", 0.009), ("late", 0.030)):
        schedule.add(name, deadline)
    served: list[tuple[str, float]] = []

    def serve(member: str, now: float) -> float:
        served.append((member, now))
        return now + 0.02

    assert schedule.next_deadline == 0.004
    assert schedule.run_pass(0.0039, serve) == 0
    assert schedule.run_pass(0.013, serve) == 3
    assert served == [("a", 0.013), ("b", 0.013), ("c", 0.013)]  # one pass, one `now`
    assert schedule.next_deadline == 0.030
    assert len(schedule) == 4


def test_equal_deadlines_are_served_in_the_order_added() -> None:
    schedule: MediaSchedule[int] = MediaSchedule()
    for member in (5, 3, 9, 1):
        schedule.add(member, 1.0)
    order: list[int] = []
    schedule.run_pass(1.0, lambda member, now: order.append(member) or now + 0.02)
    assert order == [5, 3, 9, 1]


def test_each_member_keeps_its_own_phase_over_many_passes() -> None:
    # 50 members, each started at its own moment: every frame deadline of every member is
    # served exactly once, no member is served early, and none drifts.
    rng = random.Random(5)
    pacers = {index: FramePacer(start=rng.uniform(0, 0.02)) for index in range(50)}
    schedule: MediaSchedule[int] = MediaSchedule()
    for index, pacer in pacers.items():
        schedule.add(index, pacer.next_deadline)
    sent = dict.fromkeys(pacers, 0)

    def serve(index: int, now: float) -> float:
        pacer = pacers[index]
        assert pacer.next_deadline <= now  # never early
        sent[index] += pacer.due_frames(now).send
        return pacer.next_deadline

    now = 0.0
    while now < 10.0:
        deadline = schedule.next_deadline
        assert deadline is not None
        now = deadline + rng.uniform(0, 0.0015)  # every wake-up a little late
        schedule.run_pass(now, serve)
    for index, pacer in pacers.items():
        assert pacer.frames_skipped == 0
        assert sent[index] == pacer.next_index  # every slot sent, none twice
        assert pacer.next_deadline == pytest.approx(pacer.start + pacer.next_index * 0.02)


def test_a_removed_member_is_not_served_and_may_come_back() -> None:
    schedule: MediaSchedule[str] = MediaSchedule()
    schedule.add("gone", 0.001)
    schedule.add("stays", 0.002)
    schedule.remove("gone")
    schedule.remove("never added")  # no-op
    assert "gone" not in schedule and len(schedule) == 1
    assert schedule.next_deadline == 0.002  # the stale entry does not count
    schedule.add("gone", 0.005)  # re-added: only its new entry is live
    served: list[str] = []
    schedule.run_pass(0.01, lambda member, now: served.append(member) or 1.0)
    assert served == ["stays", "gone"]
    with pytest.raises(ValueError):
        schedule.add("stays", 2.0)


def test_a_member_removed_by_another_during_a_pass_is_not_served_again() -> None:
    schedule: MediaSchedule[str] = MediaSchedule()
    schedule.add("a", 0.0)
    schedule.add("b", 0.0)
    served: list[str] = []

    def serve(member: str, now: float) -> float:
        served.append(member)
        schedule.remove(member)  # e.g. the session closed in its own callback
        return now + 0.02

    schedule.run_pass(0.0, serve)
    assert served == ["a", "b"]
    assert len(schedule) == 0 and schedule.next_deadline is None


def test_a_deadline_already_past_waits_for_the_next_pass() -> None:
    schedule: MediaSchedule[str] = MediaSchedule()
    schedule.add("a", 0.0)
    calls: list[float] = []
    assert schedule.run_pass(1.0, lambda member, now: calls.append(now) or 0.5) == 1
    assert calls == [1.0]  # served once, although its next deadline is already due
    assert schedule.next_deadline == 0.5


def test_a_member_that_raises_stays_scheduled_and_so_do_the_others() -> None:
    schedule: MediaSchedule[str] = MediaSchedule()
    for name in ("a", "bad", "c"):
        schedule.add(name, 0.0)

    def serve(member: str, now: float) -> float:
        if member == "bad":
            raise RuntimeError("bug")
        return now + 0.02

    with pytest.raises(RuntimeError):
        schedule.run_pass(0.0, serve)
    assert len(schedule) == 3
    served: list[str] = []
    schedule.run_pass(0.0, lambda member, now: served.append(member) or 1.0)
    assert served == ["bad", "c"]  # due again at once; "a" keeps the deadline it returned


# -- MediaClock: one timer per loop for every member ---------------------------------------------


class Member:
    """Sends on its own FramePacer, like an RtpSession; records the loop time of each frame."""

    def __init__(self, start: float, fail_first: bool = False) -> None:
        self.pacer = FramePacer(start)
        self.sent: list[float] = []
        self.fail_first = fail_first

    def clock_pass(self, now: float) -> float:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("bug in a pass")
        for _ in range(self.pacer.due_frames(now).send):
            self.sent.append(now)
        return self.pacer.next_deadline


async def test_one_clock_serves_many_members_on_their_own_deadlines() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock.for_loop()
    assert MediaClock.for_loop() is clock
    start = loop.time()
    members = [Member(start + index * 0.0001) for index in range(100)]  # 10 ms of phases
    for member in members:
        clock.add(member, member.pacer.next_deadline)
    await asyncio.sleep(0.5)
    for member in members:
        clock.remove(member)
    assert len(clock) == 0
    assert MediaClock.for_loop() is not clock  # the empty clock was let go
    frames = sum(len(member.sent) for member in members)
    assert frames >= 100 * 20
    for member in members:
        assert member.pacer.frames_skipped == 0
        for index, sent_at in enumerate(member.sent):
            assert sent_at >= member.pacer.deadline_of(index)  # never early
    # Members due together share a pass: far fewer wake-ups than frames.
    assert clock.served == frames
    assert clock.passes < frames / 4


async def test_a_member_whose_pass_raises_is_served_again() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock.for_loop()
    flaky = Member(loop.time(), fail_first=True)
    steady = Member(loop.time())
    clock.add(flaky, flaky.pacer.next_deadline)
    clock.add(steady, steady.pacer.next_deadline)
    await asyncio.sleep(0.2)
    clock.remove(flaky)
    clock.remove(steady)
    assert flaky.pacer.next_index >= 5 and steady.pacer.next_index >= 5  # both kept going


async def test_an_earlier_member_wakes_a_clock_armed_for_a_later_one() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock.for_loop()
    later = Member(loop.time() + 0.3)
    sooner = Member(loop.time() + 0.01)
    clock.add(later, later.pacer.next_deadline)
    clock.add(sooner, sooner.pacer.next_deadline)
    await asyncio.sleep(0.1)
    clock.remove(later)
    clock.remove(sooner)
    assert later.sent == [] and len(sooner.sent) >= 3


async def test_a_clock_other_than_the_loops_gets_its_own_media_clock() -> None:
    loop = asyncio.get_running_loop()
    offset = 1000.0

    def shifted() -> float:
        return loop.time() + offset

    clock = MediaClock.for_loop(clock=shifted)
    assert clock is not MediaClock.for_loop()
    member = Member(shifted())
    clock.add(member, member.pacer.next_deadline)
    await asyncio.sleep(0.1)
    clock.remove(member)
    # Deadlines read from its own clock, slept on the loop's: on time, and without spinning.
    assert len(member.sent) >= 3 and clock.passes <= len(member.sent) + 2


async def test_catch_up_serves_what_is_due_from_inside_a_busy_callback() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock.for_loop()
    member = Member(loop.time() + 0.005)
    clock.add(member, member.pacer.next_deadline)
    clock.catch_up()
    assert member.sent == []  # not due yet
    time.sleep(0.005 + CATCH_UP_AFTER)  # the loop is busy with other callbacks
    clock.catch_up()
    assert len(member.sent) == 1  # sent now, not when the loop gets to the timer
    await asyncio.sleep(0.05)  # the timer, armed for the old deadline, re-arms correctly
    clock.remove(member)
    assert len(member.sent) >= 3
    assert member.pacer.frames_skipped == 0


async def test_catch_up_inside_a_pass_does_nothing() -> None:
    loop = asyncio.get_running_loop()
    clock = MediaClock.for_loop()

    class Nested(Member):
        def clock_pass(self, now: float) -> float:
            clock.catch_up()  # e.g. a callback reading stats: no pass inside a pass
            return super().clock_pass(now)

    start = loop.time()
    first, second = Nested(start), Member(start)
    clock.add(first, first.pacer.next_deadline)
    clock.add(second, second.pacer.next_deadline)
    time.sleep(CATCH_UP_AFTER * 2)
    clock.catch_up()  # a pass outside the timer: the timer is still armed
    assert (len(first.sent), len(second.sent)) == (1, 1)
    await asyncio.sleep(0.05)
    clock.remove(first)
    clock.remove(second)
    for member in (first, second):  # every slot sent once, and both still on the schedule
        assert len(member.sent) == member.pacer.next_index >= 3


# -- ThreadedMediaClock: the same schedule, served from a thread of its own ----------------------


async def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_threaded_clock_serves_many_members_from_one_thread_that_ends_with_them() -> None:
    threads_before = threading.active_count()
    clock = ThreadedMediaClock.for_loop()
    assert ThreadedMediaClock.for_loop() is clock
    start = time.monotonic()
    members = [Member(start + index * 0.0001) for index in range(100)]
    for member in members:
        clock.add(member, member.pacer.next_deadline)
    assert threading.active_count() == threads_before + 1  # one thread, not one per member
    await asyncio.sleep(0.5)
    for member in members:
        clock.remove(member)
    assert ThreadedMediaClock.for_loop() is not clock  # the empty clock was let go
    await _wait_for(lambda: threading.active_count() == threads_before)  # and its thread ended
    frames = sum(len(member.sent) for member in members)
    assert frames >= 100 * 20
    for member in members:
        assert member.pacer.frames_skipped == 0
        for index, sent_at in enumerate(member.sent):
            # Never early (but for a wait that ends a hair before its grid point)...
            assert sent_at >= member.pacer.deadline_of(index) - 0.0005
            # ...and served on the grid: at most a step (and a busy machine) late.
            assert sent_at < member.pacer.deadline_of(index) + THREAD_GRID + 0.015
    assert clock.served == frames
    assert clock.passes < frames / 4


async def test_a_threaded_clock_keeps_serving_while_the_loop_computes() -> None:
    clock = ThreadedMediaClock.for_loop()
    member = Member(time.monotonic())
    clock.add(member, member.pacer.next_deadline)
    await _wait_for(lambda: len(member.sent) >= 2)
    before = len(member.sent)
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:  # holds the GIL but for the switch interval
        pass
    during = len(member.sent) - before
    clock.remove(member)
    assert during >= 10  # of 15 slots (a loaded test machine may cost a few)


async def test_a_threaded_clock_serves_again_a_member_whose_pass_raised() -> None:
    clock = ThreadedMediaClock.for_loop()
    flaky = Member(time.monotonic(), fail_first=True)
    steady = Member(time.monotonic())
    clock.add(flaky, flaky.pacer.next_deadline)
    clock.add(steady, steady.pacer.next_deadline)
    await asyncio.sleep(0.2)
    clock.remove(flaky)
    clock.remove(steady)
    assert flaky.pacer.next_index >= 5 and steady.pacer.next_index >= 5


async def test_an_earlier_member_wakes_the_thread_asleep_for_a_later_one() -> None:
    clock = ThreadedMediaClock.for_loop()
    later = Member(time.monotonic() + 0.5)
    clock.add(later, later.pacer.next_deadline)
    await asyncio.sleep(0.02)  # the thread is asleep until `later` is due
    sooner = Member(time.monotonic() + 0.01)
    clock.add(sooner, sooner.pacer.next_deadline)
    await asyncio.sleep(0.15)
    clock.remove(later)
    clock.remove(sooner)
    assert later.sent == [] and len(sooner.sent) >= 3


async def test_remove_waits_for_a_pass_under_way_and_the_member_is_never_served_after() -> None:
    clock = ThreadedMediaClock.for_loop()
    in_pass = threading.Event()

    class Slow(Member):
        def clock_pass(self, now: float) -> float:
            in_pass.set()
            time.sleep(0.05)  # e.g. waiting for the session's lock
            return super().clock_pass(now)

    member = Slow(time.monotonic())
    clock.add(member, member.pacer.next_deadline)
    await _wait_for(in_pass.is_set)
    clock.remove(member)  # while the pass sleeps: returns only after it
    sent = len(member.sent)
    await asyncio.sleep(0.1)
    assert len(member.sent) == sent


def test_a_threaded_clock_stops_when_its_loop_is_closed_under_it() -> None:
    # A loop that ends without closing its sessions (a crash, a test torn down) must not leave
    # a thread sending their frames: on a later test's port, it hijacked that test's media.
    threads_before = threading.active_count()
    loop = asyncio.new_event_loop()
    clock = ThreadedMediaClock(loop)
    member = Member(time.monotonic())
    clock.add(member, member.pacer.next_deadline)
    time.sleep(0.05)
    assert member.sent
    loop.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before:
        assert time.monotonic() < deadline, "the media clock thread outlived its loop"
        time.sleep(0.01)
    sent = len(member.sent)
    time.sleep(0.05)
    assert len(member.sent) == sent and len(clock) == 0


async def test_a_threaded_clock_tells_the_loops_lateness_observers() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, float]] = []
    stop = MediaClock.observe_lateness(loop, lambda now, lateness: seen.append((now, lateness)))
    clock = ThreadedMediaClock.for_loop()
    member = Member(time.monotonic())
    try:
        clock.add(member, member.pacer.next_deadline)
        await asyncio.sleep(0.1)
    finally:
        clock.remove(member)
        stop()
    assert len(seen) >= 4
    assert all(lateness < 0.5 for _, lateness in seen)


# -- LatenessHistogram ---------------------------------------------------------------------------


def test_lateness_percentiles_from_bins() -> None:
    histogram = LatenessHistogram(bin_width=0.001, bins=100)
    assert histogram.percentile(0.99) == 0.0
    for _ in range(990):
        histogram.record(0.0004)
    for _ in range(10):
        histogram.record(0.0303)
    assert histogram.count == 1000
    assert histogram.percentile(0.99) == pytest.approx(0.001)  # the 990th sample's bin edge
    assert histogram.percentile(0.999) == pytest.approx(0.0303)  # capped at the exact max
    assert histogram.max == pytest.approx(0.0303)
    histogram.record(5.0)  # beyond the last bin: counted there
    histogram.record(-0.001)  # a pass a hair early counts as on time
    assert histogram.max == 5.0
    assert histogram.percentile(1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        LatenessHistogram(bin_width=0)


async def test_a_timer_that_fires_within_the_clock_resolution_serves_what_is_due() -> None:
    # uvloop runs timers in whole milliseconds: one can fire while loop.time() still reads
    # short of the deadline it was for (TIMER_RESOLUTION).
    clock = MediaClock(asyncio.get_running_loop(), lambda: 100.0195)  # 0.5 ms short
    member = Member(100.020)
    clock.add(member, member.pacer.next_deadline)
    clock._on_timer()  # the (early) timer: the pass runs next
    await asyncio.sleep(0)
    clock.remove(member)
    assert member.sent == [100.0205]  # served, at the latest the true time can be
    assert clock.passes == 1
