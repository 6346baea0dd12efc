"""One media clock per process: every call's outgoing frames on one schedule.

A timer (or task) per call costs a timer handle, a future and a task step per call every
20 ms; at a few hundred calls that alone keeps the event loop busy enough to make every
call late together. Here one `MediaClock` per event loop keeps all sessions' next frame
deadlines in one heap (`MediaSchedule`, pure) and wakes once for everything due: a pass
serves each due session once, in deadline order, and the clock sleeps until the earliest
deadline left. A loop busy with many inbound packets also runs a pass from its datagram
callbacks as soon as a deadline passes (`catch_up`), rather than after the whole batch.
Each session keeps its own deadlines (its own 20 ms phase, RTP timestamps and
sequence numbers, see FramePacer); the schedule only decides who is due when.

Deadlines only ever move later between passes (FramePacer.send_now and give_back both do),
so an entry in the heap is never later than its session's real deadline: at worst a pass
finds a session with nothing due, which just reschedules it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import ClassVar, Final, Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Hashable)


class MediaSchedule(Generic[M]):
    """Per-member deadlines: which members are due at `now`, and when the next one is.

    Pure (no clock of its own: `now` is passed in). Adding and serving a member are
    O(log n) heap operations; a pass allocates nothing but one heap entry per member served.
    `remove` is O(1): the member's heap entry is dropped when it comes up.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, M]] = []
        self._serials: dict[M, int] = {}  # scheduled member -> serial of its live heap entry
        self._next_serial = 0
        # Reused by every pass (no per-pass allocation).
        self._due_members: list[M] = []
        self._due_serials: list[int] = []

    def __len__(self) -> int:
        return len(self._serials)

    def __contains__(self, member: object) -> bool:
        return member in self._serials

    def add(self, member: M, deadline: float) -> None:
        if member in self._serials:
            raise ValueError("already scheduled")
        serial = self._next_serial
        self._next_serial += 1
        self._serials[member] = serial
        # The serial breaks deadline ties (members need not be comparable) in the order added.
        heapq.heappush(self._heap, (deadline, serial, member))

    def remove(self, member: M) -> None:
        """Stop serving `member` (no-op if it is not scheduled)."""
        self._serials.pop(member, None)

    def clear(self) -> None:
        """Stop serving every member."""
        self._serials.clear()
        self._heap.clear()

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline of a scheduled member; None when there is none."""
        heap, serials = self._heap, self._serials
        while heap:
            _, serial, member = heap[0]
            if serials.get(member) == serial:
                return heap[0][0]
            heapq.heappop(heap)  # a removed member's entry
        return None

    def run_pass(self, now: float, serve: Callable[[M, float], float]) -> int:
        """Serve every member whose deadline is at or before `now`, earliest first.

        `serve(member, now)` does the member's due work and returns its next deadline; it must
        not raise. A member that `serve` removes (or removes and adds again) is not
        rescheduled by the pass. Each member is served at most once per pass: a returned
        deadline at or before `now` waits for the next pass. Returns how many were served.
        """
        heap, serials = self._heap, self._serials
        members, serial_of = self._due_members, self._due_serials
        while heap and heap[0][0] <= now:
            _, serial, member = heapq.heappop(heap)
            if serials.get(member) == serial:
                members.append(member)
                serial_of.append(serial)
        count = len(members)
        served = 0
        try:
            for member, serial in zip(members, serial_of, strict=True):
                deadline = serve(member, now)
                if serials.get(member) == serial:
                    heapq.heappush(heap, (deadline, serial, member))
                served += 1
        finally:
            # Only if serve broke its promise: no member may fall off the schedule.
            for member, serial in zip(members[served:], serial_of[served:], strict=True):
                if serials.get(member) == serial:
                    heapq.heappush(heap, (now, serial, member))
            members.clear()
            serial_of.clear()
        return count


class ClockMember(Protocol):
    def clock_pass(self, now: float) -> float:
        """Do what is due at `now` (send frames, deliver inbound ones); return the next
        deadline. Expected not to raise (a raise is logged and retried a frame later)."""
        ...


_RETRY_AFTER: Final = 0.02  # a member whose pass raised is served again one frame later
# How overdue the timer must be before an I/O callback runs the pass instead: an idle loop's
# timer fires within about a millisecond (epoll's resolution), and a pass per datagram
# would serve one or two sessions each for the same work.
CATCH_UP_AFTER: Final = 0.001
# uvloop (libuv) runs timers in whole milliseconds, so a timer can fire up to about a
# millisecond before its deadline. Such a pass serves what is due within that millisecond:
# taking the reading literally, it would find nothing due and re-arm at once, over and over
# until the deadline (38,000 passes for 2,500 frames in test_media_clock under uvloop).
# On asyncio's loop a timer never fires early.
TIMER_RESOLUTION: Final = 0.001


class MediaClock:
    """The asyncio driver of one MediaSchedule: one timer per event loop for every call.

    Get it with `MediaClock.for_loop()`; sessions `add` themselves when they open and
    `remove` themselves when they close. It exists while it has members: the last `remove`
    unregisters it, so nothing outlives the calls (or a test's event loop).
    """

    # Keyed by loop and clock; an entry lives while its clock has members.
    _running: ClassVar[dict[tuple[asyncio.AbstractEventLoop, Callable[[], float]], MediaClock]] = {}
    # Per loop: who is told, after each pass, how late it ran (the endpoint's overload guard).
    _lateness_observers: ClassVar[
        dict[asyncio.AbstractEventLoop, list[Callable[[float, float], None]]]
    ] = {}

    @classmethod
    def observe_lateness(
        cls, loop: asyncio.AbstractEventLoop, observer: Callable[[float, float], None]
    ) -> Callable[[], None]:
        """Call `observer(now, lateness_s)` after every pass of `loop`'s MediaClock (with a
        sending thread: every beat of its loop heartbeat); returns the
        function that stops it."""
        observers = cls._lateness_observers.setdefault(loop, [])
        observers.append(observer)

        def stop() -> None:
            if observer in observers:
                observers.remove(observer)
            if not observers:
                cls._lateness_observers.pop(loop, None)

        return stop

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self._loop = loop
        self._clock = clock
        self._on_loop_time = clock == loop.time
        self._schedule: MediaSchedule[ClockMember] = MediaSchedule()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0  # the (clock) deadline the armed timer is for
        self._passing = False
        self.passes = 0
        self.served = 0

    @classmethod
    def for_loop(
        cls,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
    ) -> MediaClock:
        """The clock of `loop` (default: the running one) for deadlines read from `clock`
        (default: the loop's own time); created on first use."""
        loop = loop or asyncio.get_running_loop()
        clock = clock or loop.time
        key = (loop, clock)
        media_clock = cls._running.get(key)
        if media_clock is None:
            media_clock = cls._running[key] = cls(loop, clock)
        return media_clock

    def __len__(self) -> int:
        return len(self._schedule)

    def add(self, member: ClockMember, deadline: float) -> None:
        self._schedule.add(member, deadline)
        self._running[(self._loop, self._clock)] = self
        self._arm()

    def remove(self, member: ClockMember) -> None:
        self._schedule.remove(member)
        if not len(self._schedule):
            self._disarm()
            if self._running.get((self._loop, self._clock)) is self:
                del self._running[(self._loop, self._clock)]

    def _arm(self) -> None:
        deadline = self._schedule.next_deadline
        if deadline is None:
            self._disarm()
            return
        if self._timer is not None:
            if self._timer_deadline <= deadline:
                return  # it wakes in time for this one too
            self._timer.cancel()
        if self._on_loop_time:
            when = deadline
        else:  # read our clock first: the loop time read after it makes `when` never early
            delay = deadline - self._clock()
            when = self._loop.time() + delay
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_deadline = deadline

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def catch_up(self) -> None:
        """Run a pass now if the timer is overdue (`CATCH_UP_AFTER`). Called from work that
        keeps the loop busy per call: every inbound RTP datagram (with hundreds of callbacks
        ready, the timer would only run after all of them) and every read of a session's
        stats (a status poll walks all calls in one callback). Frames then go out between
        those pieces of work instead of after all of them. No-op inside a pass."""
        if (
            self._timer is not None
            and not self._passing
            and self._clock() >= self._timer_deadline + CATCH_UP_AFTER
        ):
            # The armed timer is early now: it finds little or nothing due, and re-arms.
            self._pass()

    def _on_timer(self) -> None:
        self._timer = None
        # The pass runs after the callbacks already queued: an app woken by audio that came in
        # before the deadline (an echo, a relay) has queued its frame for this slot by then.
        self._loop.call_soon(self._run_pass)

    def _run_pass(self) -> None:
        self._pass(self._timer_deadline)
        self._arm()

    def _pass(self, timer_deadline: float | None = None) -> None:
        self.passes += 1
        self._passing = True
        now = self._clock()
        if timer_deadline is not None and 0 < timer_deadline - now <= TIMER_RESOLUTION:
            now += TIMER_RESOLUTION  # a coarse clock's early timer (see TIMER_RESOLUTION)
        try:
            self.served += self._schedule.run_pass(now, self._serve)
        finally:
            self._passing = False
        self.tell_lateness(self._loop, now, now - self._timer_deadline)

    @classmethod
    def tell_lateness(cls, loop: asyncio.AbstractEventLoop, now: float, lateness: float) -> None:
        """Hand one lateness reading to `loop`'s observers (observe_lateness)."""
        for observer in cls._lateness_observers.get(loop, ()):
            observer(now, lateness)

    @staticmethod
    def _serve(member: ClockMember, now: float) -> float:
        try:
            return member.clock_pass(now)
        except Exception:
            logger.exception("media clock pass failed for %r", member)
            return now + _RETRY_AFTER


_HEARTBEAT: Final = 0.02  # the threaded clock's event-loop heartbeat (its lateness observers)
# The threaded clock wakes only on this grid of the clock (a divisor of the 20 ms frame):
# each wake-up takes the GIL from the event loop's thread once, and with a hundred calls, each
# on its own 20 ms phase, a wake-up per deadline was 1,000 a second (+9 % CPU for a worker
# of 50 calls). On the grid it is at most 400 a second however many calls there are, and a
# call whose phase stays put is served at the same offset into every frame: its frames are
# up to a grid step late but evenly spaced (the far end hears intervals, not phases).
THREAD_GRID: Final = 0.0025


def _raise_realtime_priority() -> None:
    """Under SCHED_RR/FIFO (the agent's `realtime_priority`) put the calling thread one step
    above the process. At equal realtime priority a thread that wakes waits for a core until a
    running thread blocks or ends its 100 ms slice: the media thread, which sleeps between
    passes, would wait behind the loop's thread and every other realtime process."""
    try:
        policy = os.sched_getscheduler(0)
        if policy not in (os.SCHED_RR, os.SCHED_FIFO):
            return
        priority = os.sched_getparam(0).sched_priority
        if priority < os.sched_get_priority_max(policy):
            os.sched_setscheduler(0, policy, os.sched_param(priority + 1))
    except (AttributeError, OSError) as error:  # not Linux, or not allowed
        logger.debug("media clock thread keeps the process's priority: %s", error)


class ThreadedMediaClock:
    """The media clock on a thread of its own: every call's frames go out while the event
    loop is busy.

    On the event loop a pass runs after whatever callback holds the loop when its deadline
    comes, and at 100 calls the longest of those were single provider SDK steps of 3-16 ms
    (parsing a reply's chunks, a websocket message, opening a request): every call's frame
    late by as much. This thread sleeps until the deadline and then needs only the GIL,
    which CPython takes from the loop's thread within the switch interval
    (`sys.setswitchinterval`; the agent sets 1 ms while this clock is in use). The work it
    runs is the sending only (RtpSession's outgoing pass: next frame, RTP header, sendto),
    a few microseconds a call.

    One per event loop while it has members (`for_loop`); the thread ends when the last
    member leaves. Members' `clock_pass` runs on this thread: it must touch state shared with
    the loop only under its own lock, and reach the loop through call_soon_threadsafe.
    `add` and `remove` may be called from the loop while a pass runs; they wait for it.

    The lateness observers (the overload guard) hear from a heartbeat on the event loop
    instead, a 20 ms timer for the whole clock: with the frames on time whatever the loop
    does, what says "no room for another call" is a loop that runs its timers late (every
    call's turns wait for it).
    """

    _running: ClassVar[dict[asyncio.AbstractEventLoop, ThreadedMediaClock]] = {}

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._schedule: MediaSchedule[ClockMember] = MediaSchedule()
        self._lock = threading.Lock()  # the schedule and the thread's life
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heartbeat_due = 0.0
        self._wake_grid_point = 0.0  # the grid point it sleeps until
        self.passes = 0
        self.served = 0

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> ThreadedMediaClock:
        loop = loop or asyncio.get_running_loop()
        media_clock = cls._running.get(loop)
        if media_clock is None:
            media_clock = cls._running[loop] = cls(loop)
        return media_clock

    def __len__(self) -> int:
        return len(self._schedule)

    def add(self, member: ClockMember, deadline: float) -> None:
        if self._heartbeat is None:
            self._heartbeat_due = self._loop.time() + _HEARTBEAT
            self._heartbeat = self._loop.call_at(self._heartbeat_due, self._beat)
        with self._lock:
            self._schedule.add(member, deadline)
            self._running[self._loop] = self
            if self._thread is None:
                self._wake_grid_point = 0.0  # the first pass serves only what is due
                self._thread = threading.Thread(target=self._run, name="media-clock", daemon=True)
                self._thread.start()
            elif deadline < self._wake_grid_point:
                # Wake now, and serve only what is due by then: the grid point the thread
                # slept towards is another member's.
                self._wake_grid_point = 0.0
                self._wake.set()

    def remove(self, member: ClockMember) -> None:
        with self._lock:
            self._schedule.remove(member)
            if not len(self._schedule):
                self._wake.set()  # the thread sees nobody left and ends
                if self._running.get(self._loop) is self:
                    del self._running[self._loop]
                if self._heartbeat is not None:
                    self._heartbeat.cancel()
                    self._heartbeat = None

    def _beat(self) -> None:
        now = self._loop.time()
        lateness = now - self._heartbeat_due
        MediaClock.tell_lateness(self._loop, now, lateness)
        # The next beat on the 20 ms grid after now: a stall is one late beat, not a burst.
        self._heartbeat_due += _HEARTBEAT * (int(lateness // _HEARTBEAT) + 1)
        self._heartbeat = self._loop.call_at(self._heartbeat_due, self._beat)

    def catch_up(self) -> None:
        """Nothing to do: the thread never waits for the loop (MediaClock.catch_up)."""

    def _run(self) -> None:
        _raise_realtime_priority()
        clock, lock, schedule, wake = self._clock, self._lock, self._schedule, self._wake
        while True:
            with lock:
                if self._loop.is_closed() and len(schedule):
                    # Its loop ended without closing its sessions (a crash, a test torn down):
                    # nobody is left to, and the thread must not outlive it sending frames.
                    logger.warning(
                        "event loop closed with %d call(s) still on the media clock: stopped",
                        len(schedule),
                    )
                    schedule.clear()
                    if self._running.get(self._loop) is self:
                        del self._running[self._loop]
                if not len(schedule):
                    self._thread = None
                    return
                wake.clear()  # under the lock: an add from now on wakes the next wait
                now = clock()
                # Everything up to the grid point this wake-up was for (a wait may end a hair
                # early; an add's wake-up serves only what is due).
                serve_until = max(now, self._wake_grid_point)
                self.passes += 1
                self.served += schedule.run_pass(serve_until, MediaClock._serve)
                next_deadline = schedule.next_deadline
                if next_deadline is not None:
                    self._wake_grid_point = math.ceil(next_deadline / THREAD_GRID) * THREAD_GRID
            if next_deadline is None:
                continue  # the schedule is empty: the next turn ends the thread
            delay = self._wake_grid_point - clock()
            if delay > 0:
                wake.wait(delay)


class LatenessHistogram:
    """How late passes were, in fixed bins: O(1) to record, cheap to summarise.

    A status poll reads every call's percentiles twice a second; sorting a window of
    samples per call there stalled the loop for tens of milliseconds at a few hundred calls.
    Percentiles are the upper edge of their bin (at most `bin_width` pessimistic), capped at
    the exact maximum.
    """

    def __init__(self, bin_width: float = 0.00025, bins: int = 400) -> None:
        if bin_width <= 0 or bins < 1:
            raise ValueError("bin_width and bins must be positive")
        self.bin_width = bin_width
        self._counts = [0] * bins  # the last bin also holds everything beyond it
        self._top = 0  # highest bin used: percentiles walk down from here
        self.count = 0
        self.max = 0.0

    def record(self, lateness: float) -> None:
        lateness = max(lateness, 0.0)
        index = min(int(lateness / self.bin_width), len(self._counts) - 1)
        self._counts[index] += 1
        self.count += 1
        if index > self._top:
            self._top = index
        if lateness > self.max:
            self.max = lateness

    def percentile(self, fraction: float) -> float:
        """The smallest bin edge that at least `fraction` of the samples are at or below."""
        if not self.count:
            return 0.0
        allowed_above = self.count * (1.0 - fraction)
        above = 0
        counts = self._counts
        for index in range(self._top, -1, -1):
            above += counts[index]
            if above > allowed_above:
                return min((index + 1) * self.bin_width, self.max)
        return 0.0
