"""The supervisor of `sipagent serve --workers K`: runs the worker processes, restarts the
ones that die, and serves everyone's /status and /metrics merged on --status-bind.

Each worker is `python -m sipagent.cli.main serve` with its share of the settings in its
environment (`plan.worker_environment`), in its own session, so a terminal's Ctrl-C reaches
the supervisor alone and every worker is stopped the one way: SIGTERM from here, which makes
it hang up its calls and write their records before exiting. A worker that dies has its open
call records ended by the supervisor (it can no longer do it itself) and is started again on
the same ports, after the restart policy's delay. A supervisor that dies without forwarding
anything (SIGKILL) closes the workers' stdin pipe, and `serve --supervised` stops on that EOF,
so no worker outlives it holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sipagent.config import AgentSettings, parse_host_port

# The single agent's Host-header rule, shared so both status servers refuse the same requests.
from sipagent.observability.status import Response, _host_of, _is_loopback, answer_one_request
from sipagent.workers.aggregate import WorkerView, merge_metrics, merge_status
from sipagent.workers.plan import WorkerSpec, plan_workers, worker_environment
from sipagent.workers.restarts import RestartPolicy

log = logging.getLogger("sipagent.workers")

WORKER_COMMAND = (sys.executable, "-m", "sipagent.cli.main", "serve")
STOP_TIMEOUT = 30.0  # a worker's drain: hang-ups, then up to 10 s of record writes
SCRAPE_TIMEOUT = 2.0  # one worker's /status or /metrics; a stuck worker must not stall the rest
MAX_REQUEST_HEAD = 16 * 1024

# Called with a dead worker's pid: ends the call records it left open; returns how many.
Finaliser = Callable[[int], Awaitable[int]]


def reserve_loopback_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now (the OS picks them), for the workers' own status
    servers; they keep them across restarts."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:  # all bound at once, so the OS hands out distinct ports
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def unbindable_sip_port(specs: Sequence[WorkerSpec]) -> tuple[WorkerSpec, OSError] | None:
    """The first worker whose SIP address cannot be bound now, with why: said once at start
    (as a single agent does) rather than found by a worker crashing again and again."""
    for spec in specs:
        family = socket.AF_INET6 if ":" in spec.sip.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((spec.sip.host, spec.sip.port))
            except OSError as error:
                return spec, error
    return None


@dataclass(slots=True)
class _Worker:
    spec: WorkerSpec
    policy: RestartPolicy
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"
    output: asyncio.Task[None] | None = None  # relays its log lines

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Supervisor:
    """Runs `len(specs)` workers until `stop()` (or SIGINT/SIGTERM in `run`)."""

    def __init__(
        self,
        settings: AgentSettings,
        specs: Sequence[WorkerSpec],
        *,
        command: Sequence[str] = WORKER_COMMAND,
        finalise: Finaliser | None = None,
        restart_policy: Callable[[], RestartPolicy] = lambda: RestartPolicy(clock=time.monotonic),
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.command = list(command)
        self.finalise = finalise
        self.stop_timeout = stop_timeout
        self.workers = [_Worker(spec, restart_policy()) for spec in specs]
        self.started_at = time.time()
        self.gave_up = False
        self._stopping = asyncio.Event()
        self._server: asyncio.Server | None = None

    # -- processes ----------------------------------------------------------------------------
    async def run(self) -> int:
        """Start everything, run until a signal or a worker in a crash loop; 0 after a clean
        drain, 1 when a worker was given up on."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._stopping.set)
        await self.start_status_server()
        keepers = [asyncio.create_task(self._keep_running(worker)) for worker in self.workers]
        try:
            await self._stopping.wait()
        finally:
            # Keepers first, so none starts a process after the SIGTERMs went out.
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            log.info("supervisor stopping: SIGTERM to %d worker(s)", len(self.workers))
            await self._stop_workers()
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 2.0)
        return 1 if self.gave_up else 0

    def stop(self) -> None:
        self._stopping.set()

    async def _spawn(self, worker: _Worker) -> None:
        env = worker_environment(self.settings, worker.spec)
        worker.process = await asyncio.create_subprocess_exec(
            *self.command,
            env=env,
            # Never written: its end closes when the supervisor dies, telling the worker (`serve
            # --supervised` stops on EOF).
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        worker.policy.started()
        worker.state = "running"
        worker.output = asyncio.create_task(self._relay_output(worker, worker.process))
        log.info(
            "worker %d (pid %d): SIP %s, RTP %s",
            worker.spec.index,
            worker.process.pid,
            worker.spec.sip,
            worker.spec.rtp_ports,
        )

    async def _relay_output(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        """The worker's log lines, on the supervisor's stderr with the worker's number."""
        assert process.stdout is not None
        prefix = f"worker {worker.spec.index}: ".encode()
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # one line past the reader's 64 KiB limit: dropped, keep reading
                line = b"(a log line too long to relay)\n"
            if not line:
                return
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.buffer.flush()

    async def _keep_running(self, worker: _Worker) -> None:
        while not self._stopping.is_set():
            try:
                await self._spawn(worker)
            except OSError as error:  # cannot even start (fork failed, command missing)
                log.error("worker %d could not be started: %s", worker.spec.index, error)
                worker.process = None
            else:
                assert worker.process is not None
                code = await worker.process.wait()
                if worker.output is not None:
                    await worker.output  # the last lines it wrote before dying
                if self._stopping.is_set():
                    return
                log.error(
                    "worker %d (pid %d) died (%s)",
                    worker.spec.index,
                    worker.process.pid,
                    _describe_exit(code),
                )
                await self._finalise(worker)
            worker.state = "restarting"
            decision = worker.policy.exited()
            if decision.give_up:
                worker.state = "failed"
                log.error(
                    "worker %d is not restarted again: %s; stopping", worker.spec.index,
                    decision.reason,
                )  # fmt: skip
                self.gave_up = True
                self._stopping.set()
                return
            log.info(
                "restarting worker %d in %.1f s (%s)",
                worker.spec.index,
                decision.delay,
                decision.reason,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), decision.delay)

    async def _finalise(self, worker: _Worker) -> None:
        if self.finalise is None or worker.pid is None:
            return
        try:
            ended = await self.finalise(worker.pid)
        except Exception:  # the restart matters more than the records
            log.exception("could not end the call records of worker %d", worker.spec.index)
            return
        if ended:
            log.warning(
                "worker %d left %d call(s) open: ended as worker-died", worker.spec.index, ended
            )

    async def _stop_workers(self) -> None:
        running = [w for w in self.workers if w.process and w.process.returncode is None]
        for worker in running:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)

        async def drained(worker: _Worker) -> None:
            assert worker.process is not None
            try:
                await asyncio.wait_for(worker.process.wait(), self.stop_timeout)
            except TimeoutError:
                log.error("worker %d did not stop in %.0f s: killed", worker.spec.index,
                          self.stop_timeout)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
                await self._finalise(worker)
            if worker.output is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.output, 2.0)
            worker.state = "stopped"

        await asyncio.gather(*(drained(worker) for worker in running))

    # -- merged /status and /metrics ----------------------------------------------------------
    async def start_status_server(self) -> None:
        if not self.settings.status_bind:
            return
        bind = parse_host_port(self.settings.status_bind, 8089)
        try:
            self._server = await asyncio.start_server(
                self._handle, bind.host, bind.port, limit=MAX_REQUEST_HEAD
            )
        except OSError as error:  # as a single agent does: answering calls matters more
            log.error("status server not started on %s: %s", bind, error)
            return
        host, port = self._server.sockets[0].getsockname()[:2]
        log.info("status of all workers on http://%s:%d/status and /metrics", host, port)

    @property
    def status_address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def views(self, path: str) -> list[WorkerView]:
        """Every worker as it is now, with its /status or /metrics document when it answers."""

        async def view(worker: _Worker) -> WorkerView:
            body = None
            if worker.state == "running" and worker.spec.status is not None:
                body = await fetch(worker.spec.status.host, worker.spec.status.port, path)
            status = metrics = None
            if body is not None and path == "/status":
                with contextlib.suppress(ValueError):
                    status = json.loads(body)
            elif body is not None:
                metrics = body.decode("utf-8", "replace")
            return WorkerView(
                worker.spec.index, worker.pid, worker.state, worker.policy.restarts,
                str(worker.spec.sip), status, metrics,
            )  # fmt: skip

        return list(await asyncio.gather(*(view(worker) for worker in self.workers)))

    async def status(self) -> dict[str, Any]:
        return merge_status(
            await self.views("/status"),
            app=self.settings.app,
            user=self.settings.user,
            started_at=self.started_at,
            now=time.time(),
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_one_request(reader, writer, self._respond)

    async def _respond(self, head: bytes) -> Response:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or parts[0] != "GET":
            return 405, "text/plain", b"only GET /status and /metrics\n", False
        hosts = [v for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "host"]
        assert self._server is not None
        bound_host = str(self._server.sockets[0].getsockname()[0])
        if hosts and _is_loopback(bound_host) and not _is_loopback(_host_of(hosts[0])):
            # As a single agent's status server: no DNS-rebinding page may read callers' numbers.
            return 403, "text/plain", b"forbidden host\n", False
        path = urlsplit(parts[1]).path.rstrip("/")
        try:
            if path == "/status":
                document = await self.status()
                return 200, "application/json", json.dumps(document, default=str).encode(), False
            if path == "/metrics":
                body, content_type = merge_metrics(await self.views("/metrics"))
                return 200, content_type, body, False
        except Exception:
            log.exception("merged %s failed", path)
            return 500, "text/plain", b"internal error\n", False
        return 404, "text/plain", b"not found: GET /status or /metrics\n", False


async def fetch(host: str, port: int, path: str, timeout: float = SCRAPE_TIMEOUT) -> bytes | None:
    """The body of `GET path` from a worker's status server; None when it does not answer."""

    async def get() -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return body if head.split(b" ", 2)[1:2] == [b"200"] else None

    try:
        return await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError):
        return None


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def plan_for(settings: AgentSettings, count: int) -> list[WorkerSpec]:
    """The workers' shares, with status ports reserved when the status server is on."""
    ports = reserve_loopback_ports(count) if settings.status_bind else []
    return plan_workers(settings, count, ports)
