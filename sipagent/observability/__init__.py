"""Observability of a running agent: `/status` JSON and Prometheus `/metrics` over HTTP.

Everything here only reads the endpoint's and the app's public attributes (polling), so the
SIP and conversation code carry no instrumentation hooks and cannot be slowed down by them.
"""

from sipagent.observability.metrics import AgentMetrics
from sipagent.observability.snapshot import STAGES, Redactor, build_status, stage_latencies
from sipagent.observability.status import StatusServer, start_status_server

__all__ = [
    "STAGES",
    "AgentMetrics",
    "Redactor",
    "StatusServer",
    "build_status",
    "stage_latencies",
    "start_status_server",
]
