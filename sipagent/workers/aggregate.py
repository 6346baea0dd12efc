"""One /status and one /metrics for all workers, merged from each worker's own documents.

Pure functions of what the supervisor fetched (no sockets, no clock of their own), so the
merge rules are tested without processes. They read the workers' HTTP output, never the
observability package's internals: a worker is a black box that serves /status and /metrics.

/status keeps the single agent's shape (so `sipagent monitor` works against the supervisor):
totals summed, calls and recent events listed with the `worker` they belong to, plus a
`workers` list (pid, state, restarts, SIP address).

/metrics exposes every worker's series with a `worker` label instead of summing them: gauges
such as the registration state do not add up, and a restarted worker's counters start again
from zero, which Prometheus's rate() handles per series but which would make a summed counter
go backwards. `sum without (worker) (...)` gives the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

RECENT_TURNS = 10
RECENT_ERRORS = 10
RECENT_BARGE_INS = 5


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the supervisor knows of one worker at a scrape."""

    index: int
    pid: int | None
    state: str  # "running", "restarting", "failed" (gave up) or "stopped"
    restarts: int
    sip: str
    status: Mapping[str, Any] | None = None  # its /status document; None: unreachable
    metrics: str | None = None  # its /metrics text; None: unreachable


def _sum_numbers(documents: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Key-wise sum of the numeric values of several flat mappings."""
    total: dict[str, Any] = {}
    for document in documents:
        for key, value in (document or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _tagged(worker: int, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, "worker": worker} for item in items]


def _registration(reporting: Sequence[WorkerView]) -> dict[str, Any]:
    """Worker 0's registration, unless another worker's is in trouble (the operator must see
    the one that is not registered, not the one that is)."""
    registrations = [
        {**(view.status or {}).get("registration", {}), "worker": view.index} for view in reporting
    ]
    if not registrations:
        return {"mode": "unknown", "state": "unknown", "reason": "no worker is reachable"}
    troubled = [r for r in registrations if r.get("state") not in ("registered", "peer-to-peer")]
    return troubled[0] if troubled else registrations[0]


def merge_status(
    views: Sequence[WorkerView], *, app: str, user: str, started_at: float, now: float
) -> dict[str, Any]:
    """The supervisor's /status document from its workers' (`now`: wall time)."""
    reporting = [view for view in views if view.status is not None]

    def section(view: WorkerView, key: str) -> Mapping[str, Any]:
        return (view.status or {}).get(key) or {}

    turns, barge_ins, provider_errors, calls = [], [], [], []
    for view in reporting:
        calls += _tagged(view.index, (view.status or {}).get("calls") or [])
        turns += _tagged(view.index, (view.status or {}).get("recent_turns") or [])
        barge_ins += _tagged(view.index, section(view, "barge_ins").get("recent") or [])
        provider_errors += _tagged(view.index, section(view, "errors").get("provider") or [])
    turns.sort(key=lambda turn: turn.get("at") or 0)
    barge_ins.sort(key=lambda event: -(event.get("ago_s") or 0))
    barge_totals = _sum_numbers(section(view, "barge_ins") for view in reporting)
    errors = [section(view, "errors") for view in reporting]
    error_totals = _sum_numbers(errors)
    sips = [view.sip for view in views]
    return {
        "agent": {
            "app": app,
            "sip": ", ".join(sips),
            "sip_socket": "open" if len(reporting) == len(views) else "degraded",
            "user": user,
            "started_at": round(started_at, 3),
            "uptime_s": round(max(0.0, now - started_at), 1),
            "now": round(now, 3),
            "workers": len(views),
            "workers_reporting": len(reporting),
        },
        "registration": _registration(reporting),
        "calls": calls,
        "recent_turns": turns[-RECENT_TURNS:],
        "barge_ins": {
            "total": barge_totals.get("total", 0),
            "false_alarms": barge_totals.get("false_alarms", 0),
            "recent": barge_ins[-RECENT_BARGE_INS:],
        },
        "errors": {
            "provider": provider_errors[-RECENT_ERRORS:],
            "provider_total": error_totals.get("provider_total", 0),
            "sip_malformed": _sum_numbers(e.get("sip_malformed") for e in errors),
            "rtp_dropped": _sum_numbers(e.get("rtp_dropped") for e in errors),
        },
        "totals": {**_sum_numbers(section(view, "totals") for view in reporting)},
        "workers": [
            {
                "worker": view.index,
                "pid": view.pid,
                "state": view.state,
                "restarts": view.restarts,
                "sip": view.sip,
                "reporting": view.status is not None,
                "calls_active": section(view, "totals").get("calls_active", 0),
                "registration": section(view, "registration").get("state"),
            }
            for view in views
        ],
    }


class _Families:
    """A collector that hands back already-built metric families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge_metrics(views: Sequence[WorkerView]) -> tuple[bytes, str]:
    """(Prometheus text, content type): every worker's series with a `worker` label, plus
    the supervisor's own `sipagent_worker_up` and `sipagent_worker_restarts` per worker."""
    merged: dict[str, Metric] = {}
    for view in views:
        if view.metrics is None:
            continue
        for family in text_string_to_metric_families(view.metrics):
            target = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(view.index)}
                target.add_sample(sample.name, labels, sample.value)
    up = Metric("sipagent_worker_up", "1 when the worker answered the supervisor's scrape", "gauge")
    restarts = Metric(
        "sipagent_worker_restarts", "Times the supervisor restarted the worker", "counter"
    )
    for view in views:
        labels = {"worker": str(view.index)}
        up.add_sample("sipagent_worker_up", labels, 1.0 if view.metrics is not None else 0.0)
        restarts.add_sample("sipagent_worker_restarts_total", labels, float(view.restarts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), up, restarts]))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
