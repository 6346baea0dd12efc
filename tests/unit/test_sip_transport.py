"""UdpTransport on loopback: delivery, refused destinations, re-open after a socket death."""

from __future__ import annotations

import asyncio

from sipagent.sip.transport import UdpTransport, is_sendable


def test_only_ipv4_literals_with_real_ports_are_sendable():
    assert is_sendable(("127.0.0.1", 5060))
    for bad in (("127.0.0.1", 0), ("127.0.0.1", 65536), ("example.com", 5060),
                ("2001:db8::1", 5060), ("127.0.0.1\x00", 5060)):  # fmt: skip
        assert not is_sendable(bad), bad


async def test_sends_receives_refuses_and_reopens():
    received: list[tuple[bytes, tuple[str, int]]] = []
    udp = UdpTransport(lambda data, source: received.append((data, source)))
    await udp.open("127.0.0.1", 0)
    own = udp.local_address
    udp.send(b"hello", own)
    udp.send(b"never", ("127.0.0.1", 65536))
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.01)
    assert received == [(b"hello", own)]
    assert udp.dropped["unsendable destination"] == 1 and udp.state["up"]
    assert udp.datagram_transport is not None
    udp.datagram_transport.sendto(b"x", ("127.0.0.1", 65536))  # asyncio closes the socket
    for _ in range(100):
        if udp.losses and udp.is_up:
            break
        await asyncio.sleep(0.01)
    assert udp.losses == 1 and udp.is_up and udp.local_address == own
    await udp.close()
    udp.send(b"late", own)
    assert udp.dropped["socket down"] == 1 and udp.losses == 1  # a closed socket stays closed
