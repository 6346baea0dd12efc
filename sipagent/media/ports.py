"""Allocation of local UDP ports for RTP."""

from __future__ import annotations

import errno
import ipaddress
import socket


class RtpPortsExhaustedError(RuntimeError):
    """Every even port of the configured RTP range is in use."""


class RtpPortAllocator:
    """Hands out bound, non-blocking UDP sockets on even ports of [first, last].

    RTP uses even ports (RFC 3550 section 11; the odd neighbour is RTCP's by
    convention, which we leave unbound as we do not run RTCP). Allocation rotates
    through the range rather than reusing the lowest free port, so packets still in
    flight for a call that just ended do not land in the next call.
    """

    def __init__(self, first: int, last: int, host: str) -> None:
        first += first % 2
        if not 0 < first <= last <= 65535:
            raise ValueError(f"invalid RTP port range {first}-{last}")
        self.first = first
        self.last = last
        self.host = host
        self._family = _address_family(host)
        self._ports = range(first, last + 1, 2)
        self._cursor = 0
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    @property
    def capacity(self) -> int:
        return len(self._ports)

    def allocate(self) -> socket.socket:
        """A UDP socket bound to a free even port; raises RtpPortsExhaustedError."""
        for _ in range(len(self._ports)):
            port = self._ports[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._ports)
            if port in self._in_use:
                continue
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError as error:
                sock.close()
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # taken by another process; try the next one
                raise
            sock.setblocking(False)
            self._in_use.add(port)
            return sock
        raise RtpPortsExhaustedError(
            f"no free even UDP port in {self.first}-{self.last} on {self.host} "
            f"({len(self._in_use)} held by this process)"
        )

    # The RTCP companion port is not bound (see class docstring), so a "pair" is one socket.
    bind_pair = allocate

    def release(self, port: int) -> None:
        """Make `port` available again; the caller closes its socket."""
        self._in_use.discard(port)


def _address_family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET  # a host name: resolved by bind() as IPv4
