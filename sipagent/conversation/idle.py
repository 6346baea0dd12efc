"""Idle and call-length policy: re-prompt a silent caller, then hang up politely. Pure, and
driven by deadlines: whoever runs it sleeps until `deadline` (or until a pause ends) and then
calls tick()."""

from __future__ import annotations

from enum import StrEnum


class IdleAction(StrEnum):
    NONE = "none"
    REPROMPT = "reprompt"  # "Are you still there?"
    HANG_UP = "hang_up"  # silence after every re-prompt: goodbye
    TIME_LIMIT = "time_limit"  # the call reached its maximum length


class IdlePolicy:
    def __init__(
        self, started: float, *, reprompt_after: float, max_reprompts: int, max_call: float
    ) -> None:
        self.started = started
        self.reprompt_after = reprompt_after
        self.max_reprompts = max_reprompts
        self.max_call = max_call
        self.last_activity = started
        self.reprompts = 0
        self.finished = False
        self._paused_by: set[str] = set()

    def caller_active(self, now: float) -> None:
        """The caller spoke or typed: the silence count starts over."""
        self.last_activity = now
        self.reprompts = 0

    def pause(self, reason: str) -> None:
        """Silence is not counted while `reason` lasts (we are thinking or talking, the caller
        is mid-turn or has us on hold); the call's time limit still is."""
        self._paused_by.add(reason)

    def resume(self, reason: str, now: float) -> None:
        """`reason` is over; once no pause is left, silence counts from `now`."""
        if reason not in self._paused_by:
            return
        self._paused_by.discard(reason)
        if not self._paused_by:
            self.last_activity = now

    @property
    def paused(self) -> bool:
        return bool(self._paused_by)

    @property
    def deadline(self) -> float | None:
        """The next moment tick() has something to do; None once the policy is finished."""
        if self.finished:
            return None
        time_limit = self.started + self.max_call
        if self._paused_by:
            return time_limit
        return min(time_limit, self.last_activity + self.reprompt_after)

    def tick(self, now: float) -> IdleAction:
        # Both checks compare against the same sums as `deadline`, so a tick at the deadline
        # always acts (a runner sleeping until it can never spin).
        if self.finished:
            return IdleAction.NONE
        if now >= self.started + self.max_call:
            self.finished = True
            return IdleAction.TIME_LIMIT
        if self._paused_by or now < self.last_activity + self.reprompt_after:
            return IdleAction.NONE
        self.last_activity = now
        self.reprompts += 1
        if self.reprompts > self.max_reprompts:
            self.finished = True
            return IdleAction.HANG_UP
        return IdleAction.REPROMPT
