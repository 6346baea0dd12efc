"""Real-peer test rig: run Kamailio, SIPp, baresip and tcpdump against the agent on loopback.

The peer configuration templates live in ``tests/peers/``; this package fills them in, runs the
peers as asyncio subprocesses and parses what they leave behind (logs, message traces, pcaps,
recordings).  Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

from .common import (
    LOOPBACK,
    PEERS_DIR,
    REQUIRED_BINARIES,
    ProcessResult,
    fill_template,
    free_rtp_port,
    free_udp_port,
    free_udp_ports,
    missing_binaries,
    udp_port_in_use,
    wait_udp_bound,
)

__all__ = [
    "LOOPBACK",
    "PEERS_DIR",
    "REQUIRED_BINARIES",
    "ProcessResult",
    "fill_template",
    "free_rtp_port",
    "free_udp_port",
    "free_udp_ports",
    "missing_binaries",
    "udp_port_in_use",
    "wait_udp_bound",
]
