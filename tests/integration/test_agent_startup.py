"""What `run_agent` does once the endpoint is up, before the first call."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

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
