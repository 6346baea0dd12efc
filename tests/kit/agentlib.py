"""Runs a real SipEndpoint inside the test's event loop, on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sipagent.apps import build_app
from sipagent.config import AgentSettings
from sipagent.sip.call import Call, CallState
from sipagent.sip.endpoint import SipEndpoint
from sipagent.sip.message import SipMessage

_next_rtp_base = 21000 + (os.getpid() % 40) * 200  # concurrent pytest runs stay apart


def free_sip_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rtp_range(size: int = 200) -> str:
    """A fresh RTP range per agent, so parallel agents and stale sockets never collide."""
    global _next_rtp_base
    base = _next_rtp_base
    _next_rtp_base = 21000 + (_next_rtp_base - 21000 + size) % 8000
    return f"{base}-{base + size - 1}"


@contextlib.asynccontextmanager
async def running_agent(
    *, record_dir: Path | None = None, **overrides: Any
) -> AsyncIterator[SipEndpoint]:
    settings_values: dict[str, Any] = {
        # A fresh SQLite file per agent: tests never share or leave a database behind.
        "database_url": f"sqlite:///{tempfile.mkdtemp(prefix='sipagent-db-')}/agent.db",
        "bind": f"127.0.0.1:{free_sip_port()}",
        "rtp_ports": rtp_range(),
        "app": "player",
        "keepalive_interval": 1.0,
        "record_dir": str(record_dir) if record_dir else "",
    }
    settings_values.update(overrides)
    settings = AgentSettings(_env_file=None, **settings_values)  # type: ignore[call-arg]
    ended: list[Call] = []
    endpoint = SipEndpoint(settings, build_app(settings.app, settings), on_call_ended=ended.append)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll a condition on the event loop (tests assert behaviour; this only bounds waiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(interval)


class MiniUac:
    """Just enough of a UAC to send hand-written requests and collect what comes back."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.received: list[SipMessage] = []

    def send(self, data: str, destination: tuple[str, int]) -> None:
        self.sock.sendto(data.replace("\n", "\r\n").encode(), destination)

    async def collect(self, seconds: float) -> list[SipMessage]:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            try:
                data = self.sock.recv(65535)
                self.received.append(SipMessage(data))
            except BlockingIOError:
                await asyncio.sleep(0.01)
        return self.received

    def statuses(self, method: str) -> list[int]:
        return [
            m.status_code for m in self.received if not m.is_request and m.cseq_method == method
        ]


def request(
    method: str,
    uac: MiniUac,
    agent_port: int,
    *,
    cseq: int,
    to_tag: str = "",
    branch: str = "z9hG4bKmini1",
    sdp: str = "",
    call_id: str = "mini-1",
) -> str:
    to = "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    length = len(sdp.replace("\n", "\r\n"))
    content = (
        f"Content-Type: application/sdp\nContent-Length: {length}\n"
        if sdp
        else ("Content-Length: 0\n")
    )
    return (
        f"{method} sip:agent@127.0.0.1:{agent_port} SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{uac.port};branch={branch};rport\n"
        "From: <sip:mini@127.0.0.1>;tag=minitag\n"
        f"To: {to}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\n"
        f"Contact: <sip:mini@127.0.0.1:{uac.port}>\nMax-Forwards: 70\n"
        f"{content}\n{sdp}"
    )


def sdp(port: int, version: int = 1) -> str:
    return (
        f"v=0\no=mini 1 {version} IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=audio {port} RTP/AVP 8 0\na=rtpmap:8 PCMA/8000\na=rtpmap:0 PCMU/8000\n"
    )


async def sipp_pattern_call(
    agent: SipEndpoint, sipp: Callable[..., Any], audio_dir: Path
) -> tuple[Any, Call]:
    """A SIPp caller streaming tests' pattern.ulaw straight at `agent`, up and confirmed:
    (the SIPp process, the agent's Call). SIPp hangs up 1.5 s after the pattern ends."""
    pattern_file = audio_dir / "pattern.ulaw"
    host, port = agent.local_address
    caller = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                  params={"AUDIO": pattern_file,
                          "HOLD_MS": pattern_file.stat().st_size // 8 + 1500})  # fmt: skip
    await caller.start(wait_bound=False)
    await wait_until(
        lambda: any(c.state == CallState.CONFIRMED for c in agent.calls.values()), 5, "up"
    )
    return caller, next(iter(agent.calls.values()))


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket."""
    packets = []
    while True:
        try:
            packets.append(sock.recv(2048))
        except BlockingIOError:
            return packets
