"""The status HTTP server: `GET /status` (JSON) and `GET /metrics` (Prometheus) of one agent.

Plain asyncio rather than a web framework: two read-only GET routes do not justify a runtime
dependency, and it runs on the agent's own event loop, so reading the endpoint's state needs
no locks (every snapshot is taken between two event-loop steps, never mid-update). The metrics
fold the endpoint's events as they happen; the live figures are read per request, so an idle
dashboard costs the agent nothing.

It has no authentication, so it binds to 127.0.0.1 by default; when bound to loopback it also
refuses requests whose Host header names anything else (a web page cannot then read caller
numbers through DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sipagent.config import HostPort, parse_host_port
from sipagent.observability.metrics import AgentMetrics
from sipagent.observability.snapshot import Redactor, build_status

if TYPE_CHECKING:
    from sipagent.sip.endpoint import SipEndpoint

log = logging.getLogger("sipagent.status")

DEFAULT_STATUS_PORT = 8089
REQUEST_TIMEOUT = 5.0  # a client that has not sent its request head by then is dropped
MAX_REQUEST_HEAD = 16 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_INDEX = b"sipagent status server\n  GET /status   JSON snapshot\n  GET /metrics  Prometheus\n"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(host_header: str) -> str:
    """'127.0.0.1:8089' -> '127.0.0.1', '[::1]:8089' -> '::1', 'localhost' -> 'localhost'."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


Response = tuple[int, str, bytes, bool]  # status, content type, body, HEAD request


async def answer_one_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    respond: Callable[[bytes], Response | Awaitable[Response]],
) -> None:
    """Read one request head, answer it with `respond(head)` and close the connection (the
    status server's and the workers' supervisor's one request per connection)."""
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        answer = respond(head)
        status, content_type, body, head_only = (
            await answer if inspect.isawaitable(answer) else answer
        )
        headers = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(headers.encode("ascii") + (b"" if head_only else body))
        await writer.drain()
    except ConnectionError:
        pass  # the client went away; nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


class StatusServer:
    """Serves one endpoint's status and metrics; its metrics observe the endpoint's events
    from construction on (before start(): no call is missed while the socket opens)."""

    def __init__(
        self, endpoint: SipEndpoint, bind: HostPort, *, metrics: AgentMetrics | None = None
    ) -> None:
        self.endpoint = endpoint
        self.bind = bind
        self.metrics = metrics or AgentMetrics()
        self._detach_metrics: Callable[[], None] | None = self.metrics.attach(endpoint.events)
        self.redact = Redactor.for_endpoint(endpoint)
        self.started_at = time.time()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.bind.host, self.bind.port, limit=MAX_REQUEST_HEAD
        )
        if not _is_loopback(self.bind.host):
            log.warning(
                "status server on %s is reachable from the network and has no authentication: "
                "it shows callers' numbers",
                self.url,
            )
        log.info("status on %s/status, metrics on %s/metrics", self.url, self.url)

    async def stop(self) -> None:
        if self._detach_metrics is not None:
            self._detach_metrics()
            self._detach_metrics = None
        if self._server is not None:
            self._server.close()
            # Requests still being answered are short; do not let a stuck client hold shutdown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- content ----------------------------------------------------------------------------
    def refresh(self) -> None:
        self.metrics.refresh_if_stale(self.endpoint)

    def status(self) -> dict[str, Any]:
        self.refresh()
        return build_status(
            self.endpoint,
            self.metrics,
            redact=self.redact,
            started_at=self.started_at,
            loop_now=asyncio.get_running_loop().time(),
        )

    def metrics_text(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scrape with this Accept header."""
        self.refresh()
        return self.metrics.exposition(accept)

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_one_request(reader, writer, self._respond)

    def _respond(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, HEAD request) for one request head."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n", False
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        host = headers.get("host")
        if host is not None and _is_loopback(self.bind.host) and not _is_loopback(_host_of(host)):
            return 403, "text/plain", b"forbidden host\n", head_only
        path = urlsplit(target).path.rstrip("/") or "/"
        try:
            if path == "/status":
                body = json.dumps(self.status(), default=str, separators=(",", ":")).encode()
                return 200, "application/json", body, head_only
            if path == "/metrics":
                body, content_type = self.metrics_text(headers.get("accept", ""))
                return 200, content_type, body, head_only
        except Exception:
            log.exception("status request %s failed", path)
            return 500, "text/plain", b"internal error\n", head_only
        if path == "/":
            return 200, "text/plain", _INDEX, head_only
        return 404, "text/plain", b"not found\n", head_only


async def start_status_server(endpoint: SipEndpoint, bind: str) -> StatusServer | None:
    """Start the status server on `bind` ("host:port"); None when disabled ("").

    A port that cannot be bound is logged, not raised: the agent's job is answering calls,
    and a scraper notices a missing target by itself.
    """
    if not bind.strip():
        return None
    server = StatusServer(endpoint, parse_host_port(bind, DEFAULT_STATUS_PORT))
    try:
        await server.start()
    except OSError as error:
        log.error("status server not started on %s: %s", bind, error)
        await server.stop()  # its metrics stop observing the endpoint
        return None
    return server
