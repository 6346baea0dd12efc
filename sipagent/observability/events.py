"""What happens in an agent, as typed events, and the bus that hands them to observers.

The SIP side and the conversations emit; metrics (and anything else that wants to know, e.g.
a test) subscribe. An event is emitted once, when what it reports is final, so an observer
folds each exactly once without keeping per-call positions or guessing when a call settled.

Observers run synchronously on the event loop, inside the emitter's step: they must be cheap
(bump a counter, append to a bounded buffer). One that raises is logged once and skipped;
it never reaches the call. Each endpoint has its own bus, so two agents in one process (the
tests) never see each other's events.

This module imports nothing from sipagent but the pure barge-in policy's enum, so the SIP
`Call` and the conversation engine can both import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sipagent.conversation.barge_in import BargeInAction

if TYPE_CHECKING:
    from sipagent.conversation.turns import Turn
    from sipagent.media.session import RtpSessionStats

log = logging.getLogger("sipagent.events")


class ProviderStage(StrEnum):
    """Which provider failed; the value is also the metrics label."""

    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    FALLBACK_TTS = "fallback_tts"


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A dialog was created: an INVITE we will answer, or a call we placed that was answered."""

    call_id: str
    caller: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """Our 200 OK went out for an inbound call."""

    call_id: str
    answer_seconds: float  # INVITE received -> 200 OK sent (includes ring time)


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over and torn down: its media is closed, so `media` is final."""

    call_id: str
    reason: str
    duration: float | None  # answer to hang-up, seconds; None when never answered
    media: RtpSessionStats | None  # None when no media session was ever opened


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    """A turn of a conversation whose timings are final (an assistant turn's first-packet stamp
    may arrive after the turn itself is recorded: the event waits for it)."""

    call_id: str
    index: int  # position in the call's turns
    turn: Turn

    @property
    def role(self) -> str:
        return self.turn.role


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller's voice paused the agent, interrupted it, or turned out not to (resume)."""

    call_id: str
    action: BargeInAction  # PAUSE, RESUME or INTERRUPT; never NONE
    at: float  # loop clock
    caller_onset: float | None = None  # first voiced frame of the caller's speech


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A speech or language provider failed during a call."""

    call_id: str
    stage: ProviderStage
    message: str  # what the service said; may carry secrets: redact before it leaves
    gave_up: bool = False  # the stage is not asked again during this call

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


Event = CallStarted | CallAnswered | CallEnded | TurnCompleted | BargeIn | ProviderFailure
Observer = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of events to the observers subscribed, in subscription order."""

    __slots__ = ("_failed", "_observers")

    def __init__(self) -> None:
        # Replaced, never mutated: emit() iterates without copying, and an observer that
        # (un)subscribes while being called does not change the round in progress.
        self._observers: tuple[Observer, ...] = ()
        # ids of the subscribed observers that raised once (an observer need not be hashable;
        # the bus holds it, so its id is its own while it is subscribed)
        self._failed: set[int] = set()

    @property
    def observed(self) -> bool:
        """Anyone listening (an emitter may skip building an event nobody wants)."""
        return bool(self._observers)

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add `observer`; returns the function that removes it again."""
        self._observers = (*self._observers, observer)
        return lambda: self.unsubscribe(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Remove `observer` (its first subscription, if it subscribed twice). No-op if absent."""
        observers = list(self._observers)
        if observer in observers:
            observers.remove(observer)
            self._observers = tuple(observers)
        if observer not in observers:
            self._failed.discard(id(observer))

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # observability must never break the call that emitted
                if id(observer) in self._failed:
                    continue
                self._failed.add(id(observer))
                log.exception(
                    "event observer %r failed on %s (further failures of it are not logged)",
                    observer, type(event).__name__,
                )  # fmt: skip
