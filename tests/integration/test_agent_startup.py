"""What `run_agent` does once the endpoint is up, before the first call."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap

from sipagent.agent import run_agent
from sipagent.config import AgentSettings
from tests.kit.agentlib import free_sip_port, rtp_range


async def test_start_up_objects_are_out_of_the_garbage_collectors_reach() -> None:
    # A full collection walks every tracked object holding the GIL: with the ~200,000 objects
    # of the imports and clients, 70-150 ms in which no call got a frame (bench/capacity.py).
    gc.unfreeze()
    settings = AgentSettings(  # type: ignore[call-arg]
        _env_file=None,
        app="echo",
        bind=f"127.0.0.1:{free_sip_port()}",
        rtp_ports=rtp_range(),
        status_bind="",
    )
    ready = asyncio.Event()
    agent = asyncio.create_task(run_agent(settings, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        assert gc.get_freeze_count() > 10_000
        # What is allocated afterwards (a call's objects) is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # run_agent's own way to stop
        await asyncio.wait_for(agent, 20)
        gc.unfreeze()


STOPPED_WHILE_STARTING = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from sipagent.agent import run_agent
    from sipagent.config import AgentSettings
    from sipagent.sip.endpoint import SipEndpoint

    start = SipEndpoint.start

    async def start_then_stop_requested(self):
        await start(self)
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor's stop the instant the port is bound

    SipEndpoint.start = start_then_stop_requested
    settings = AgentSettings(
        _env_file=None, app="echo", bind=sys.argv[1], rtp_ports=sys.argv[2], status_bind=""
    )
    asyncio.run(run_agent(settings))
    print("stopped cleanly")
    """
)


def test_a_stop_signal_while_the_endpoint_starts_is_a_clean_stop() -> None:
    # A supervisor (systemd, the workers' supervisor, a test) may send SIGTERM as soon as the
    # SIP port answers. The handler must already be there: installed after start(), the signal
    # killed the process (exit -15) without hanging up or finalising anything.
    result = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_STARTING, f"127.0.0.1:{free_sip_port()}", rtp_range()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "stopped cleanly" in result.stdout
