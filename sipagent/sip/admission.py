"""Who gets a new call: INVITE admission against floods and half-open dialogs (pure policy).

A dialog we answered (200 OK sent) but that is never ACKed holds a socket until Timer H
(32 s). If such dialogs counted as calls, 50 INVITEs every 32 s would keep the clinic's line
busy forever. So calls in progress are counted on confirmed dialogs only; unconfirmed ones
have their own small quota per source address, and a per-source token bucket limits how fast
one address may INVITE us at all. A source is the IP address: a trunk sends every call from
one address, and its calls are ACKed within a round trip, so they never pile up.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    status_code: int
    reason: str
    retry_after: int | None = None  # seconds, for a Retry-After header

    @property
    def extra_headers(self) -> str:
        return f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else ""


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_calls: int = 40  # confirmed calls (Settings.max_calls)
    max_unconfirmed_per_source: int = 8
    invites_per_second: float = 20.0  # per source, sustained
    invite_burst: int = 40  # per source
    tracked_sources: int = 4096  # token buckets kept (least recently used dropped)


class InviteAdmission:
    """Decides on each new INVITE; the endpoint tells it the current dialog counts."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.refused: dict[int, int] = {}

    def decide(
        self,
        source: str,
        now: float,
        *,
        confirmed_calls: int,
        unconfirmed_from_source: int,
        overloaded: bool = False,
    ) -> Refusal | None:
        limits = self.limits
        refusal: Refusal | None = None
        if not self._take_token(source, now):
            refusal = Refusal(503, "Service Unavailable", retry_after=2)
        elif unconfirmed_from_source >= limits.max_unconfirmed_per_source:
            refusal = Refusal(503, "Service Unavailable", retry_after=5)
        elif confirmed_calls >= limits.max_calls:
            refusal = Refusal(486, "Busy Here")
        elif overloaded:  # the calls we have are running late (OverloadGuard)
            refusal = Refusal(503, "Service Unavailable", retry_after=5)
        if refusal is not None:
            self.refused[refusal.status_code] = self.refused.get(refusal.status_code, 0) + 1
        return refusal

    def _take_token(self, source: str, now: float) -> bool:
        limits = self.limits
        tokens, at = self._buckets.pop(source, (float(limits.invite_burst), now))
        tokens = min(float(limits.invite_burst), tokens + (now - at) * limits.invites_per_second)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > limits.tracked_sources:
            self._buckets.popitem(last=False)
        return allowed


class OverloadGuard:
    """Refuse new calls while the process cannot keep the calls it has on time.

    Fed with how late the event loop ran work that had a deadline (the media clock's passes:
    every active call's next frame), it reports overload when, over the last `window`
    seconds, more than `late_share` of the samples were later than `late_after` seconds;
    once overloaded it stays so until `recover_after` seconds have passed with no such
    sample. New INVITEs are then refused with 503 + Retry-After: beyond capacity the caller
    gets a clean refusal (and a trunk tries another route) instead of every call degrading.
    """

    def __init__(
        self,
        *,
        late_after: float = 0.020,
        late_share: float = 0.05,
        window: float = 2.0,
        recover_after: float = 3.0,
        min_samples: int = 50,
        min_late: int = 10,
    ) -> None:
        self.late_after = late_after
        self.late_share = late_share
        self.window = window
        self.recover_after = recover_after
        self.min_samples = min_samples
        # One stall makes every call's next pass late at once: with few calls that alone was
        # over 5 % of the window (a first call's set-up refused 19 of a 25-call ramp at 16 %
        # CPU). Overload is many late passes, not one bad moment.
        self.min_late = min_late
        self._samples: deque[tuple[float, bool]] = deque()  # (at, late)
        self._late_in_window = 0
        self._overloaded_until: float | None = None
        self.episodes = 0  # times it went from fine to overloaded

    def observe(self, now: float, lateness: float) -> None:
        late = lateness > self.late_after
        self._samples.append((now, late))
        self._late_in_window += late
        self._expire(now)
        if late and self._late_in_window >= self.min_late and self._share_late() > self.late_share:
            if self._overloaded_until is None or now >= self._overloaded_until:
                self.episodes += 1
            self._overloaded_until = now + self.recover_after

    def overloaded(self, now: float) -> bool:
        return self._overloaded_until is not None and now < self._overloaded_until

    def _share_late(self) -> float:
        count = len(self._samples)
        return self._late_in_window / count if count >= self.min_samples else 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        samples = self._samples
        while samples and samples[0][0] < horizon:
            _, late = samples.popleft()
            self._late_in_window -= late
