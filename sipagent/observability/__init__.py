"""Observability of a running agent: typed events, `/status` JSON and Prometheus `/metrics`.

The SIP side and the conversations emit events (events.py) on their endpoint's bus; metrics
fold them as they come, and read the few live figures (active calls, RTP of calls still in
progress, registration) when scraped.

The names below are loaded on first use: `sipagent.sip.call` imports `events`, and the
metrics import the SIP side, so importing them eagerly here would be circular.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipagent.observability.events import EventBus
    from sipagent.observability.metrics import AgentMetrics
    from sipagent.observability.snapshot import STAGES, Redactor, build_status, stage_latencies
    from sipagent.observability.status import StatusServer, start_status_server

_HOMES = {
    "EventBus": "events",
    "AgentMetrics": "metrics",
    "STAGES": "snapshot",
    "Redactor": "snapshot",
    "build_status": "snapshot",
    "stage_latencies": "snapshot",
    "StatusServer": "status",
    "start_status_server": "status",
}

__all__ = [
    "STAGES",
    "AgentMetrics",
    "EventBus",
    "Redactor",
    "StatusServer",
    "build_status",
    "stage_latencies",
    "start_status_server",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
