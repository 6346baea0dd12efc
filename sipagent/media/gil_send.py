"""UDP sends that keep the GIL: the media clock's thread must not hand it to the event loop
once per frame.

`socket.sendto` releases the GIL around the system call. On the media clock's thread each
release lets the event loop's thread (waiting for the GIL since the thread took it) run
again, and getting the GIL back takes a switch interval each time: a pass sending 50 frames
while the loop computes took 19 ms (p50) instead of 0.35 ms, and started 69 ms late
(p50) instead of 1.35 ms (the "convoy effect"). A send on a non-blocking UDP socket never
waits, so holding the GIL through it costs nothing: `sendto(2)` is called through ctypes'
`PyDLL`, whose calls keep the GIL.

Linux's sockaddr layout only (`available()` says whether this platform has it).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Final

from sipagent.media.source import Address

# The descriptor is gone or is not a socket: nothing will ever be sent on it again.
BROKEN_SOCKET_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


def _load_sendto() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
        sendto = libc.sendto
    except (OSError, AttributeError):
        return None
    sendto.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
    ]
    sendto.restype = ctypes.c_ssize_t
    return sendto


_sendto = _load_sendto()


def available() -> bool:
    return _sendto is not None


def pack_sockaddr(family: int, address: Address) -> bytes:
    """Linux's `struct sockaddr_in` / `sockaddr_in6` for an IP literal and port."""
    host, port = address
    if family == socket.AF_INET:
        return (
            struct.pack("=H", family)
            + struct.pack("!H", port)
            + socket.inet_pton(family, host)
            + bytes(8)
        )
    if family == socket.AF_INET6:
        return (
            struct.pack("=H", family)
            + struct.pack("!HI", port, 0)
            + socket.inet_pton(family, host)
            + struct.pack("=I", 0)
        )
    raise ValueError(f"not an IP socket family: {family}")


class GilHoldingSender:
    """Sends datagrams on `sock`'s descriptor (which stays the caller's to close)."""

    def __init__(self, sock: socket.socket) -> None:
        if _sendto is None:
            raise RuntimeError("no GIL-holding sendto on this platform")
        self._fd = sock.fileno()
        self._family = sock.family
        self._address: Address | None = None
        self._sockaddr = b""

    def send(self, datagram: bytes, address: Address) -> int:
        """Send one datagram; 0, or the errno of a failed send (the frame is lost)."""
        if address != self._address:
            self._sockaddr = pack_sockaddr(self._family, address)
            self._address = address
        sockaddr = self._sockaddr
        assert _sendto is not None
        if _sendto(self._fd, datagram, len(datagram), 0, sockaddr, len(sockaddr)) >= 0:
            return 0
        return ctypes.get_errno()
