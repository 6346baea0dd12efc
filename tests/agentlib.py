"""Runs a real SipEndpoint inside the test's event loop, on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sipagent.apps.base import build_app
from sipagent.config import AgentSettings
from sipagent.sip.call import Call
from sipagent.sip.endpoint import SipEndpoint

_next_rtp_base = 21000 + (os.getpid() % 40) * 200  # concurrent pytest runs stay apart


def free_sip_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rtp_range(size: int = 200) -> str:
    """A fresh RTP range per agent, so parallel agents and stale sockets never collide."""
    global _next_rtp_base
    base = _next_rtp_base
    _next_rtp_base = 21000 + (_next_rtp_base - 21000 + size) % 8000
    return f"{base}-{base + size - 1}"


@contextlib.asynccontextmanager
async def running_agent(
    *, record_dir: Path | None = None, **overrides: Any
) -> AsyncIterator[SipEndpoint]:
    settings_values: dict[str, Any] = {
        # A fresh SQLite file per agent: tests never share or leave a database behind.
        "database_url": f"sqlite:///{tempfile.mkdtemp(prefix='sipagent-db-')}/agent.db",
        "bind": f"127.0.0.1:{free_sip_port()}",
        "rtp_ports": rtp_range(),
        "app": "player",
        "keepalive_interval": 1.0,
        "record_dir": str(record_dir) if record_dir else "",
    }
    settings_values.update(overrides)
    settings = AgentSettings(_env_file=None, **settings_values)  # type: ignore[call-arg]
    ended: list[Call] = []
    endpoint = SipEndpoint(settings, build_app(settings.app, settings), on_call_ended=ended.append)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll a condition on the event loop (tests assert behaviour; this only bounds waiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(interval)
