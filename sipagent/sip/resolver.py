"""Host names to addresses, off the event loop, once (RFC 3263 A records only; no SRV).

A name in a Contact, Route, registrar setting or dial target used to reach `sendto`, which
resolves it synchronously: a slow resolver then stalled the loop, and every call's RTP with it,
on every send. Names are resolved here in the loop's executor with a timeout, and remembered.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from sipagent.sip.uri import UriError

RESOLVE_TIMEOUT = 2.0
CACHE_SECONDS = 60.0
FAILURE_CACHE_SECONDS = 5.0  # a dead name is not asked again at once by every retransmission


class HostResolver:
    def __init__(
        self,
        *,
        timeout: float = RESOLVE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[str, tuple[float, str | None, str]] = {}  # name -> expiry, ip, error

    async def resolve(self, host: str, port: int) -> tuple[str, int]:
        """(IPv4 address, port) for `host`; UriError if it is IPv6 or does not resolve."""
        host = host.strip("[]")
        try:
            return str(IPv4Address(host)), port
        except ValueError:
            pass
        try:
            IPv6Address(host)
        except ValueError:
            pass
        else:
            raise UriError(f"{host} is IPv6: this agent speaks SIP over IPv4 only")
        now = self._clock()
        cached = self._cache.get(host.lower())
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                raise UriError(cached[2])
            return cached[1], port
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM
                ),
                self.timeout,
            )
            address = str(infos[0][4][0])
        except (TimeoutError, OSError, IndexError, UnicodeError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else str(error) or "no address"
            message = f"cannot resolve {host!r}: {reason}"
            self._cache[host.lower()] = (now + FAILURE_CACHE_SECONDS, None, message)
            raise UriError(message) from error
        self._cache[host.lower()] = (now + CACHE_SECONDS, address, "")
        return address, port
