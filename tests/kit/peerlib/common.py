"""Shared helpers: template filling, free loopback ports, subprocess bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
PEERS_DIR = Path(__file__).resolve().parents[2] / "peers"

# binary -> Debian package that provides it
REQUIRED_BINARIES: dict[str, str] = {
    "kamailio": "kamailio",
    "kamcmd": "kamailio",
    "sipp": "sip-tester",
    "baresip": "baresip-core",
    "tcpdump": "tcpdump",
    "sox": "sox",
    "espeak-ng": "espeak-ng",
}

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def missing_binaries(names: Iterable[str] = REQUIRED_BINARIES) -> list[str]:
    """The names (of ``names``) not found on PATH (also looking in /usr/sbin, /sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [name for name in names if shutil.which(name, path=path) is None]


def which(name: str) -> str:
    """Absolute path of a peer binary (also looks in /usr/sbin, which may be off PATH)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not found (Debian package {REQUIRED_BINARIES.get(name)})")
    return found


def fill_template(text: str, values: Mapping[str, object], *, source: str = "template") -> str:
    """Replace every ``@NAME@`` with ``values[NAME]``; fail on a placeholder left unfilled."""
    missing: set[str] = set()

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            missing.add(name)
            return match.group(0)
        return str(values[name])

    out = _PLACEHOLDER.sub(sub, text)
    if missing:
        raise KeyError(f"{source}: no value for placeholder(s) {sorted(missing)}")
    return out


def render_template(template: Path, dest: Path, values: Mapping[str, object]) -> Path:
    """Fill ``template`` into ``dest`` (parents created) and return ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(fill_template(template.read_text(), values, source=str(template)))
    return dest


# ---------------------------------------------------------------------------------------------
# ports

_recent_ports: dict[int, float] = {}
_RECENT_S = 30.0


def _remember(port: int) -> None:
    now = time.monotonic()
    for old, when in list(_recent_ports.items()):
        if now - when > _RECENT_S:
            del _recent_ports[old]
    _recent_ports[port] = now


def _proc_net_udp_ports() -> set[int] | None:
    """Local ports of all IPv4/IPv6 UDP sockets (Linux /proc), or None if unavailable."""
    ports: set[int] = set()
    found = False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports if found else None


def udp_port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if some socket is bound to UDP ``port``.  Reads /proc/net/udp on Linux (so the
    check never races a peer that is about to bind the port), else tries to bind it."""
    bound = _proc_net_udp_ports()
    if bound is not None:
        return port in bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_udp_port(host: str = LOOPBACK) -> int:
    """A UDP port on ``host`` that is free now (picked by the kernel; not handed out twice
    by this process within 30 s)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _recent_ports and port + 1 not in _recent_ports:
            _remember(port)
            return port
    raise RuntimeError("no free UDP port found")


def free_udp_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free UDP ports."""
    return [free_udp_port(host) for _ in range(count)]


def free_rtp_port(span: int = 4, host: str = LOOPBACK) -> int:
    """An even port P with P .. P+span-1 all free (RTP, RTCP and SIPp's video pair)."""
    for _ in range(200):
        base = free_udp_port(host) & ~1
        ports = range(base, base + span)
        if base < 1024 or ports[-1] > 65535:
            continue
        if any(p in _recent_ports and p != base for p in ports):
            continue
        if not any(udp_port_in_use(p, host) for p in ports):
            for p in ports:
                _remember(p)
            return base
    raise RuntimeError(f"no run of {span} free UDP ports found")


async def wait_udp_bound(port: int, *, timeout: float = 5.0, host: str = LOOPBACK) -> None:
    """Wait until some process has bound UDP ``host:port`` (e.g. a SIPp UAS is listening)."""
    deadline = time.monotonic() + timeout
    while not udp_port_in_use(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing bound UDP {host}:{port} within {timeout} s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class ProcessResult:
    """What a finished peer process left behind."""

    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """A multi-line diagnostic for assertion messages."""
        parts = [
            f"$ {' '.join(self.args)}",
            f"returncode={self.returncode} timed_out={self.timed_out} "
            f"duration={self.duration:.2f}s",
            f"--- stdout (tail) ---\n{_tail(self.stdout)}",
            f"--- stderr (tail) ---\n{_tail(self.stderr)}",
        ]
        for name, path in self.files.items():
            if path.exists() and path.is_file():
                parts.append(f"--- {name}: {path} (tail) ---\n{_tail(_read_text(path))}")
        return "\n".join(parts)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        return f"<unreadable: {exc}>"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


async def start_process(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    stdout: int | IO[Any] | None = asyncio.subprocess.PIPE,
    stderr: int | IO[Any] | None = asyncio.subprocess.PIPE,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``args`` in its own session (so its children can be ended with it)."""
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=str(cwd) if cwd else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )


async def end_process(
    proc: asyncio.subprocess.Process,
    *,
    sig: int = signal.SIGTERM,
    grace: float = 5.0,
) -> int | None:
    """Send ``sig`` to the process group we started, then SIGKILL it after ``grace`` s."""
    if proc.returncode is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return await proc.wait()


async def communicate_with_timeout(
    proc: asyncio.subprocess.Process, timeout: float, *, sig: int = signal.SIGTERM
) -> tuple[bytes, bytes, bool]:
    """``proc.communicate()`` bounded by ``timeout``; on timeout the process group is ended
    and whatever output it produced is still returned.  Returns (stdout, stderr, timed_out)."""
    task = asyncio.ensure_future(proc.communicate())
    try:
        out, err = await asyncio.wait_for(asyncio.shield(task), timeout)
        return out or b"", err or b"", False
    except TimeoutError:
        await end_process(proc, sig=sig)
        out, err = await task
        return out or b"", err or b"", True
