import socket
from collections.abc import Iterator

import pytest

from sipagent.media.ports import RtpPortAllocator, RtpPortsExhaustedError


def free_even_range(width: int) -> tuple[int, int]:
    """An even-aligned port range that is probably free (found by binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    base -= base % 2
    base = min(base, 65535 - width)
    base -= base % 2
    return base, base + width - 1


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_allocates_even_nonblocking_bound_sockets(sockets: list[socket.socket]) -> None:
    first, last = free_even_range(20)
    allocator = RtpPortAllocator(first, last, "127.0.0.1")
    for _ in range(3):
        sock = allocator.allocate()
        sockets.append(sock)
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port % 2 == 0
        assert first <= port <= last
        assert sock.getblocking() is False
        assert sock.type == socket.SOCK_DGRAM
    assert len({s.getsockname()[1] for s in sockets}) == 3
    assert allocator.in_use == {s.getsockname()[1] for s in sockets}


def test_odd_first_port_is_rounded_up(sockets: list[socket.socket]) -> None:
    first, last = free_even_range(10)
    allocator = RtpPortAllocator(first + 1, last, "127.0.0.1")
    sock = allocator.bind_pair()
    sockets.append(sock)
    assert sock.getsockname()[1] >= first + 2


def test_skips_ports_taken_by_someone_else(sockets: list[socket.socket]) -> None:
    first, last = free_even_range(4)  # two even ports
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(squatter)
    squatter.bind(("127.0.0.1", first))
    allocator = RtpPortAllocator(first, last, "127.0.0.1")
    sock = allocator.allocate()
    sockets.append(sock)
    assert sock.getsockname()[1] == first + 2


def test_exhaustion_raises_clear_error_and_release_frees(sockets: list[socket.socket]) -> None:
    first, last = free_even_range(4)
    allocator = RtpPortAllocator(first, last, "127.0.0.1")
    a = allocator.allocate()
    b = allocator.allocate()
    sockets += [a, b]
    with pytest.raises(RtpPortsExhaustedError, match=f"{first}-{last}"):
        allocator.allocate()
    port = a.getsockname()[1]
    a.close()
    allocator.release(port)
    c = allocator.allocate()
    sockets.append(c)
    assert c.getsockname()[1] == port


def test_invalid_range() -> None:
    with pytest.raises(ValueError):
        RtpPortAllocator(20000, 10000, "127.0.0.1")
