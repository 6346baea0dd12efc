"""What every fake provider server shares: an aiohttp app on 127.0.0.1:free port."""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, Self, TypeVar

from aiohttp import web


class LoopbackServer:
    """Subclasses add their routes in `routes(app)`; `port` is known once started."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        # Short shutdown grace: a handler still streaming or a connection the client left
        # open must not hold a test up.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Recorded(Protocol):
    finished: asyncio.Event


RecordT = TypeVar("RecordT", bound=_Recorded)


class HttpFakeServer(LoopbackServer, Generic[RecordT]):
    """An HTTP provider fake: records requests, injects failures, stops streaming on stop()."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[RecordT] = []
        self._failures: list[int] = []  # HTTP statuses for the next requests
        self._closing = asyncio.Event()  # handlers still streaming give up on stop()

    async def stop(self) -> None:
        self._closing.set()
        await super().stop()

    def fail_next(self, status: int, count: int = 1) -> None:
        self._failures.extend([status] * count)

    async def wait_finished(self, index: int = -1, timeout: float = 5.0) -> RecordT:
        """The recorded request once its handler is done (it has seen the end or a hang-up)."""
        record = self.requests[index]
        await asyncio.wait_for(record.finished.wait(), timeout)
        return record


def client_port(request: web.Request) -> int:
    """The client's TCP port: two requests with the same one came over the same connection."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else 0
