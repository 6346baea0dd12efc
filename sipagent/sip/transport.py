"""The SIP transport: what the transaction layer sends through (RFC 3261 18).

`SipTransport` is the interface: UDP implements it today, a TCP or TLS transport would tomorrow
(`reliable = True` turns off the transactions' retransmissions and shortens their waits).
`UdpTransport` is one UDP socket on the event loop: every datagram goes to one callback, and
an address asyncio could choke on is refused before `sendto` (it closes the socket on any
non-`OSError`); if the socket dies anyway it is opened again on the same address.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Protocol, cast

log = logging.getLogger("sipagent.sip")

Address = tuple[str, int]
REOPEN_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0)  # then every 2 s


class SipTransport(Protocol):
    """Where transactions send; the adapter that owns it feeds received messages back."""

    @property
    def reliable(self) -> bool:
        """True for stream transports (TCP, TLS): no retransmissions (RFC 3261 17)."""
        ...

    def send(self, data: bytes, destination: Address) -> None:
        """Send one message; never raises (a failure is logged and counted)."""
        ...


def is_sendable(destination: Address) -> bool:
    """An IPv4 literal and a port asyncio's sendto cannot choke on: anything else (a name,
    NUL bytes, port 65536) made it raise inside asyncio, which closed the socket for good."""
    host, port = destination
    if not isinstance(port, int) or not 0 < port < 65536 or not isinstance(host, str):
        return False
    try:
        IPv4Address(host)
    except ValueError:
        return False
    return True


class UdpTransport(asyncio.DatagramProtocol):
    """One UDP socket: `send` to any checked address, every datagram to `on_datagram`."""

    reliable = False

    def __init__(
        self,
        on_datagram: Callable[[bytes, Address], None],
        *,
        dropped: Counter[str] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        reopen: bool = True,
    ) -> None:
        """`dropped` counts what was not sent (shared with the endpoint's other drop reasons);
        `on_error` hears asyncio's error_received (e.g. ICMP port unreachable); `reopen`:
        open the socket again when it dies, until `close()`."""
        self.on_datagram = on_datagram
        self.dropped: Counter[str] = dropped if dropped is not None else Counter()
        self.on_error = on_error
        self.reopen = reopen
        self.datagram_transport: asyncio.DatagramTransport | None = None
        self.bound_address: Address | None = None
        self.losses = 0  # times the socket died under us and was re-opened
        self.error = ""
        self._closing = False
        self._reopen_task: asyncio.Task[None] | None = None

    async def open(self, host: str, port: int) -> None:
        """Bind `host:port` (0: any free port); OSError if it cannot be had."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.bound_address = (host, self.local_address[1])

    @property
    def local_address(self) -> Address:
        assert self.datagram_transport is not None
        host, port = self.datagram_transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def is_up(self) -> bool:
        return self.datagram_transport is not None and not self.datagram_transport.is_closing()

    @property
    def state(self) -> dict[str, Any]:
        return {"up": self.is_up, "losses": self.losses, "error": self.error}

    def send(self, data: bytes, destination: Address) -> None:
        """Send one datagram; an unusable destination or a dead socket is logged, never raised
        (callers with a host name resolve it first)."""
        if not is_sendable(destination):
            self.dropped["unsendable destination"] += 1
            log.warning("not sending to %r: not an IPv4 address and port", destination[:2])
            return
        transport = self.datagram_transport
        if transport is None or transport.is_closing():
            self.dropped["socket down"] += 1
            return
        transport.sendto(data, destination)

    async def close(self) -> None:
        self._closing = True
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            await asyncio.gather(self._reopen_task, return_exceptions=True)
        if self.datagram_transport is not None:
            self.datagram_transport.close()

    # -- asyncio.DatagramProtocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.datagram_transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)
        if self.on_error is not None:
            self.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed. Unless we are closing it, that is a fault (asyncio closes a
        datagram transport on any non-OSError from sendto): say so and open it again."""
        self.datagram_transport = None
        if self._closing or not self.reopen:
            return
        self.losses += 1
        self.error = repr(exc) if exc else "closed"
        log.error("SIP socket lost (%s): re-opening %s:%d", self.error,
                  *(self.bound_address or ("?", 0)))  # fmt: skip
        self._reopen_task = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        assert self.bound_address is not None
        loop = asyncio.get_running_loop()
        attempt = 0
        while self.datagram_transport is None and not self._closing:
            await asyncio.sleep(REOPEN_DELAYS[min(attempt, len(REOPEN_DELAYS) - 1)])
            attempt += 1
            try:
                await loop.create_datagram_endpoint(lambda: self, local_addr=self.bound_address)
            except OSError as error:
                log.error("SIP socket re-open failed (attempt %d): %s", attempt, error)
                continue
            log.warning("SIP socket re-opened on %s:%d", *self.bound_address)
            self.error = ""
