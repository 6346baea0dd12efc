"""Provider failures of one call: one concise log line each (the service's own words, no
traceback), a `ProviderFailure` event on the call's bus, and the stages that failed in a way
that cannot heal, which are not asked again during the call."""

from __future__ import annotations

import logging
from collections import deque

from sipagent.observability.events import EventBus, ProviderFailure, ProviderStage
from sipagent.providers.base import ProviderError

log = logging.getLogger("sipagent.conversation")

RECENT_FAILURES_KEPT = 50  # per call, for /status; the metrics count every one (events)


class ProviderFailures:
    def __init__(self, call_id: str, events: EventBus) -> None:
        self.call_id = call_id
        self.events = events
        self.recent: deque[ProviderFailure] = deque(maxlen=RECENT_FAILURES_KEPT)
        self.given_up: set[ProviderStage] = set()

    @property
    def errors(self) -> list[str]:
        """The recent failures as "stage: what the service said" lines, oldest first."""
        return [str(failure) for failure in self.recent]

    def report(self, stage: ProviderStage, error: Exception) -> None:
        """A provider call raised: log it, and stop using the stage if it cannot heal."""
        gives_up = isinstance(error, ProviderError) and not error.heals
        if gives_up:
            self.given_up.add(stage)
        log.warning(
            "[%s] %s provider failed: %s%s", self.call_id, stage, error,
            " (not used again on this call)" if gives_up else "",
        )  # fmt: skip
        self.note(stage, str(error), gave_up=gives_up)

    def note(self, stage: ProviderStage, message: str, *, gave_up: bool = False) -> None:
        """A failure the provider reported by itself (the STT's error events), already logged."""
        failure = ProviderFailure(self.call_id, stage, message, gave_up)
        self.recent.append(failure)
        self.events.emit(failure)

    def usable(self, stage: ProviderStage) -> bool:
        return stage not in self.given_up
