"""Idle and call-length policy: re-prompt a silent caller, then hang up politely. Pure."""

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

    def caller_active(self, now: float) -> None:
        """The caller spoke or typed: the silence count starts over."""
        self.last_activity = now
        self.reprompts = 0

    def agent_active(self, now: float) -> None:
        """We are (or just were) talking or thinking: silence is counted from the end."""
        self.last_activity = now

    def tick(self, now: float) -> IdleAction:
        if self.finished:
            return IdleAction.NONE
        if now - self.started >= self.max_call:
            self.finished = True
            return IdleAction.TIME_LIMIT
        if now - self.last_activity < self.reprompt_after:
            return IdleAction.NONE
        self.last_activity = now
        self.reprompts += 1
        if self.reprompts > self.max_reprompts:
            self.finished = True
            return IdleAction.HANG_UP
        return IdleAction.REPROMPT
