"""Which ports each worker of `sipagent serve --workers K` gets: derived purely from settings.

Worker i listens for SIP on the configured port + i (worker 0 keeps the configured port, so a
single-worker setup and peers that already know the address are unchanged), takes the i-th
equal slice of the RTP range, and serves its own /status on a loopback port the supervisor
chose (the supervisor serves the aggregate on the configured --status-bind). Every worker
registers its own Contact when a registrar is set: the registrar (or a proxy) then spreads
calls over them, and a call's dialog and media stay in the one process that answered it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from sipagent.config import AgentSettings, HostPort, env_names

MIN_RTP_PORTS_PER_WORKER = 2  # even ports: two concurrent calls at the very least


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker's share of the settings."""

    index: int
    sip: HostPort
    rtp_first: int
    rtp_last: int
    status: HostPort | None  # its own /status and /metrics, on loopback; None: status off

    @property
    def rtp_ports(self) -> str:
        return f"{self.rtp_first}-{self.rtp_last}"

    @property
    def rtp_capacity(self) -> int:
        """Even ports in the slice: the most calls with media this worker can hold."""
        return len(range(self.rtp_first + self.rtp_first % 2, self.rtp_last + 1, 2))


def worker_count(requested: int, cpu_count: int | None, *, registering: bool = False) -> int:
    """The `workers` setting -> how many agent processes: 0 means one per CPU core, except
    when registering with a server. A registrar (Twilio SIP domain, Asterisk, Kamailio's
    `lookup`) forks each INVITE to every registered contact at once, so K workers would all
    answer every call (the losers get CANCEL or a BYE); spreading calls over workers needs a
    trunk that load-balances its origination URIs (one per worker port) or a dispatcher."""
    if requested > 0:
        return requested
    return 1 if registering else max(1, cpu_count or 1)


def plan_workers(
    settings: AgentSettings, count: int, status_ports: Sequence[int] = ()
) -> list[WorkerSpec]:
    """Split SIP ports and the RTP range over `count` workers.

    `status_ports` are the loopback ports of the workers' own status servers (one per worker;
    empty when the status server is off). Raises ValueError, naming the fix, when the SIP ports
    or the RTP range cannot be shared by that many workers."""
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {count}")
    if status_ports and len(status_ports) != count:
        raise ValueError(f"{len(status_ports)} status ports for {count} workers")
    bind = settings.bind_address
    if bind.port + count - 1 > 65535:
        raise ValueError(f"SIP ports {bind.port}..{bind.port + count - 1} run past 65535")
    first, last = settings.rtp_port_range
    even_ports = list(range(first + first % 2, last + 1, 2))
    per_worker = len(even_ports) // count
    if per_worker < MIN_RTP_PORTS_PER_WORKER:
        raise ValueError(
            f"RTP range {settings.rtp_ports} has {len(even_ports)} even ports, too few for "
            f"{count} workers ({MIN_RTP_PORTS_PER_WORKER} each at least): widen --rtp-ports "
            "or lower --workers"
        )
    specs = []
    for index in range(count):
        slice_first = even_ports[index * per_worker]
        # The odd neighbour of the slice's last even port belongs to the slice (RTCP's by
        # convention); the last worker also takes any ports left over by the division.
        slice_last = last if index == count - 1 else even_ports[(index + 1) * per_worker - 1] + 1
        status = HostPort("127.0.0.1", status_ports[index]) if status_ports else None
        specs.append(
            WorkerSpec(
                index, HostPort(bind.host, bind.port + index), slice_first, slice_last, status
            )
        )
    return specs


def host_port_text(address: HostPort) -> str:
    """'host:port', bracketing an IPv6 host so `parse_host_port` reads it back."""
    return f"[{address.host}]:{address.port}" if ":" in address.host else str(address)


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def worker_environment(
    settings: AgentSettings, spec: WorkerSpec, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of worker `spec.index`: every setting as the supervisor resolved it
    (flags included, so a worker never reads a different .env or default), then its own share.
    Passed in the environment rather than argv so secrets stay out of `ps`."""
    env = dict(os.environ if base is None else base)
    for name in AgentSettings.model_fields:
        env[env_names(name)[0]] = _env_value(getattr(settings, name))
    env[env_names("bind")[0]] = host_port_text(spec.sip)
    env[env_names("rtp_ports")[0]] = spec.rtp_ports
    env[env_names("status_bind")[0]] = host_port_text(spec.status) if spec.status else ""
    env[env_names("workers")[0]] = "1"  # a worker is one process: never a supervisor itself
    return env
