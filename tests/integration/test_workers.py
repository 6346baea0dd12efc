"""`sipagent serve --workers K` with real processes: restart of a dead worker with its open call
records ended, giving up on a crash loop, and (with SIPp) calls on every worker seen in the
supervisor's merged /status and /metrics, a SIGKILLed worker answering again, SIGINT draining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sipagent.config import AgentSettings
from sipagent.storage import (
    WORKER_DIED,
    CallRecorder,
    finalise_calls_of_dead_worker,
    make_engine,
    upgrade,
    worker_name,
)
from sipagent.storage.models import CallRecord
from sipagent.workers.plan import plan_workers
from sipagent.workers.restarts import RestartPolicy
from sipagent.workers.supervisor import Supervisor, fetch
from tests.kit.agentlib import free_sip_port, rtp_range, wait_until
from tests.kit.peerlib.common import wait_udp_bound
from tests.kit.peerlib.sipp import Sipp

# Stands in for an agent: lives until SIGTERM, then exits 0 as a drained agent does.
SLEEPER = [
    sys.executable, "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(120)",
]  # fmt: skip


def settings(**values: object) -> AgentSettings:
    defaults: dict[str, object] = {
        "bind": f"127.0.0.1:{free_sip_port()}", "rtp_ports": rtp_range(), "app": "echo",
        "status_bind": "",
    }  # fmt: skip
    return AgentSettings(_env_file=None, **{**defaults, **values})  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_killed_worker_is_restarted_and_its_open_calls_ended(tmp_path):
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    upgrade(url)
    engine = make_engine(url)
    finalised: list[int] = []

    async def finalise(pid: int) -> int:
        finalised.append(pid)
        return await asyncio.to_thread(finalise_calls_of_dead_worker, engine, worker_name(pid))

    resolved = settings()
    supervisor = Supervisor(resolved, plan_workers(resolved, 2), command=SLEEPER, finalise=finalise)
    running = asyncio.create_task(supervisor.run())
    try:
        first, second = supervisor.workers
        await wait_until(lambda: first.pid is not None and second.pid is not None, 10, "workers")
        doomed, survivor = second.pid, first.pid
        assert doomed is not None and survivor is not None
        # Each "worker" has a call in progress, as the receptionist would have recorded it.
        for pid, call_id in ((doomed, "doomed-call"), (survivor, "surviving-call")):
            assert await CallRecorder(engine, worker=worker_name(pid)).record_call_start(call_id)

        os.kill(doomed, signal.SIGKILL)
        await wait_until(lambda: second.pid not in (None, doomed), 10, "worker 1 restarted")
        assert finalised == [doomed] and second.state == "running"
        assert second.policy.restarts == 1 and first.pid == survivor
        with Session(engine) as session:
            rows = {c.sip_call_id: c for c in session.scalars(select(CallRecord))}
        assert rows["doomed-call"].end_reason == WORKER_DIED
        assert rows["doomed-call"].ended_at is not None
        assert rows["surviving-call"].ended_at is None

        pids = [first.pid, second.pid]
        supervisor.stop()
        assert await asyncio.wait_for(running, 15) == 0
        assert not any(alive(pid) for pid in pids if pid is not None)
        assert [w.state for w in supervisor.workers] == ["stopped", "stopped"]
        assert finalised == [doomed]  # the drained workers ended their own calls
    finally:
        supervisor.stop()
        await asyncio.gather(running, return_exceptions=True)
        engine.dispose()


async def test_a_worker_that_keeps_crashing_at_start_is_given_up_on():
    resolved = settings()
    supervisor = Supervisor(
        resolved,
        plan_workers(resolved, 2),
        command=[sys.executable, "-c", "raise SystemExit(3)"],
        restart_policy=lambda: RestartPolicy(
            clock=asyncio.get_running_loop().time, first_delay=0.01, max_fast_crashes=3
        ),
    )
    assert await asyncio.wait_for(supervisor.run(), 20) == 1
    assert "failed" in [w.state for w in supervisor.workers]
    assert max(w.policy.restarts for w in supervisor.workers) == 2  # third crash: given up


# -- the real thing ----------------------------------------------------------------------------


async def test_a_busy_port_of_any_worker_is_named_at_start(tmp_path):
    sip = free_sip_port_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", sip + 1))  # worker 1's port
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipagent.cli.main", "serve", "--workers", "2",
            "--app", "echo", "--bind", f"127.0.0.1:{sip}", "--status-bind", "",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        _, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, errors.decode()
    assert f"cannot listen for SIP: UDP 127.0.0.1:{sip + 1} is in use" in errors.decode()


def free_sip_port_pair() -> int:
    """A UDP port p with p + 1 free too (worker 1 listens on the next port)."""
    for _ in range(50):
        port = free_sip_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free UDP ports")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get_json(port: int) -> dict:
    body = await fetch("127.0.0.1", port, "/status")
    assert body is not None
    return json.loads(body)


async def status_when(port: int, predicate: Callable[[dict], bool], what: str) -> dict:
    """The supervisor's /status once `predicate` holds (polled for up to 15 s)."""
    for _ in range(150):
        status = await get_json(port)
        if predicate(status):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {status}")


def sample(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.rpartition(" ")[2])


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    sip, status_port = free_sip_port_pair(), free_tcp_port()
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "serve", "--workers", "2", "--app", "echo",
        "--bind", f"127.0.0.1:{sip}", "--rtp-ports", rtp_range(),
        "--status-bind", f"127.0.0.1:{status_port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_udp_bound(sip + 1, timeout=15)
        status = await status_when(
            status_port, lambda doc: all(w["reporting"] for w in doc["workers"]), "workers up"
        )
        pids = [worker["pid"] for worker in status["workers"]]
        supervisor.kill()  # SIGKILL: nothing is forwarded; the workers notice on their own
        await supervisor.wait()
        await wait_until(lambda: not any(alive(pid) for pid in pids), 15, "workers gone")
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()


@pytest.mark.peers
async def test_serve_with_two_workers(sipp, audio_dir, tmp_path: Path):
    sip, status_port = free_sip_port_pair(), free_tcp_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipagent.cli.main", "serve", "--workers", "2",
            "--app", "echo", "--bind", f"127.0.0.1:{sip}", "--rtp-ports", rtp_range(),
            "--status-bind", f"127.0.0.1:{status_port}",
            stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    pattern = audio_dir / "pattern.ulaw"

    def call(port: int, hold_ms: int) -> Sipp:
        return sipp("uac_call.xml", remote=f"127.0.0.1:{port}", service="agent",
                    params={"AUDIO": pattern, "HOLD_MS": hold_ms})  # fmt: skip

    try:
        await wait_udp_bound(sip, timeout=15)
        await wait_udp_bound(sip + 1, timeout=15)
        callers = [call(sip, 3000), call(sip + 1, 3000)]
        for caller in callers:
            await caller.start(wait_bound=False)
        status = await status_when(
            status_port,
            lambda doc: sorted(c["worker"] for c in doc["calls"]) == [0, 1],
            "a call on each worker",
        )
        assert status["totals"]["calls_active"] == 2 and status["agent"]["workers"] == 2
        # Counters are folded in by each worker's status poll (every 0.5 s): wait for it.
        for _ in range(50):
            metrics = (await fetch("127.0.0.1", status_port, "/metrics") or b"").decode()
            calls = [sample(metrics, f'sipagent_calls_total{{worker="{i}"}}') for i in (0, 1)]
            if calls == [1, 1]:
                break
            await asyncio.sleep(0.1)
        assert sample(metrics, 'sipagent_calls_total{worker="0"}') == 1
        assert sample(metrics, 'sipagent_calls_total{worker="1"}') == 1
        monitor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipagent.cli.main", "monitor", "--once",
            "--url", f"http://127.0.0.1:{status_port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        shown = (await asyncio.wait_for(monitor.communicate(), 15))[0].decode()
        assert monitor.returncode == 0 and shown.count("confirmed") == 2, shown
        for caller in callers:
            (await caller.wait()).check()
        # Like a single agent's: a page under another name (DNS rebinding) reads nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", status_port)
        writer.write(b"GET /status HTTP/1.1\r\nHost: evil.example:80\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 403")
        writer.close()

        # SIGKILL worker 1: it comes back on the same port and answers again.
        [_, second] = status["workers"]
        os.kill(second["pid"], signal.SIGKILL)

        after = await status_when(
            status_port,
            lambda doc: (
                doc["workers"][1]["pid"] != second["pid"] and doc["workers"][1]["reporting"]
            ),
            "worker 1 back",
        )
        again = after["workers"][1]
        assert again["restarts"] == 1 and again["state"] == "running"
        (await call(sip + 1, 500).run()).check()
        metrics = (await fetch("127.0.0.1", status_port, "/metrics") or b"").decode()
        assert sample(metrics, 'sipagent_worker_restarts_total{worker="1"}') == 1

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert not alive(status["workers"][0]["pid"]) and not alive(again["pid"])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = log_path.read_text()
    assert "worker 1 (pid" in text and "died (killed by SIGKILL)" in text
    assert text.count("shutting down: hanging up") >= 2, text
