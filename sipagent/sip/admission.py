"""Who gets a new call: INVITE admission against floods and half-open dialogs (pure policy).

A dialog we answered (200 OK sent) but that is never ACKed holds a socket until Timer H
(32 s). If such dialogs counted as calls, 50 INVITEs every 32 s would keep the clinic's line
busy forever. So calls in progress are counted on confirmed dialogs only; unconfirmed ones
have their own small quota per source address, and a per-source token bucket limits how fast
one address may INVITE us at all. A source is the IP address: a trunk sends every call from
one address, and its calls are ACKed within a round trip, so they never pile up.
"""

from __future__ import annotations

from collections import OrderedDict
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
    max_calls: int = 50  # confirmed calls
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
    ) -> Refusal | None:
        limits = self.limits
        refusal: Refusal | None = None
        if not self._take_token(source, now):
            refusal = Refusal(503, "Service Unavailable", retry_after=2)
        elif unconfirmed_from_source >= limits.max_unconfirmed_per_source:
            refusal = Refusal(503, "Service Unavailable", retry_after=5)
        elif confirmed_calls >= limits.max_calls:
            refusal = Refusal(486, "Busy Here")
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
