"""When to restart a worker that died: backoff with a cap, and giving up on a crash loop."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """`delay` seconds before the restart; `give_up` when the worker keeps dying at start-up
    (a bad setting or a port taken by someone else: restarting forever would only hide it)."""

    delay: float
    give_up: bool
    reason: str


class RestartPolicy:
    """One worker's restart history, on an injected monotonic clock.

    A run shorter than `fast_seconds` is a fast crash. Consecutive fast crashes back off
    exponentially from `first_delay` up to `max_delay`; a run that lasted resets the backoff
    (a worker killed once an hour comes straight back). `max_fast_crashes` fast crashes
    within `window_seconds` mean giving up.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        fast_seconds: float = 10.0,
        max_fast_crashes: int = 5,
        window_seconds: float = 120.0,
    ) -> None:
        self.clock = clock
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.fast_seconds = fast_seconds
        self.max_fast_crashes = max_fast_crashes
        self.window_seconds = window_seconds
        self.restarts = 0
        self._started_at: float | None = None
        self._consecutive_fast = 0
        self._fast_crash_times: deque[float] = deque()

    def started(self) -> None:
        """The worker process was (re)started now."""
        self._started_at = self.clock()

    def exited(self) -> RestartDecision:
        """The worker died now (not asked to stop): restart it after `delay`, or give up."""
        now = self.clock()
        lived = now - (self._started_at if self._started_at is not None else now)
        self._started_at = None
        if lived >= self.fast_seconds:
            self._consecutive_fast = 0
            self.restarts += 1
            return RestartDecision(0.0, False, f"died after {lived:.0f} s")
        self._consecutive_fast += 1
        self._fast_crash_times.append(now)
        while self._fast_crash_times and now - self._fast_crash_times[0] > self.window_seconds:
            self._fast_crash_times.popleft()
        if len(self._fast_crash_times) >= self.max_fast_crashes:
            return RestartDecision(
                0.0,
                True,
                f"{len(self._fast_crash_times)} crashes within {self.window_seconds:.0f} s, "
                f"each less than {self.fast_seconds:.0f} s after starting",
            )
        delay = min(self.max_delay, self.first_delay * 2 ** (self._consecutive_fast - 1))
        self.restarts += 1
        return RestartDecision(delay, False, f"died {lived:.1f} s after starting")
