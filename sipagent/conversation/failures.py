"""Provider failures of one call: one concise log line each (the service's own words, no
traceback), and the stages that failed in a way that cannot heal, which are not asked again
during the call."""

from __future__ import annotations

import logging

from sipagent.providers.base import ProviderError

log = logging.getLogger("sipagent.conversation")


class ProviderFailures:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.errors: list[str] = []  # "stage: what the service said", in order
        self.given_up: set[str] = set()

    def report(self, stage: str, error: Exception) -> None:
        self.errors.append(f"{stage}: {error}")
        gives_up = isinstance(error, ProviderError) and not error.heals
        if gives_up:
            self.given_up.add(stage)
        log.warning(
            "[%s] %s provider failed: %s%s", self.call_id, stage, error,
            " (not used again on this call)" if gives_up else "",
        )  # fmt: skip

    def usable(self, stage: str) -> bool:
        return stage not in self.given_up
