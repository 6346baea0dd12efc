"""Kamailio 5.6 as the test registrar/proxy (db_text subscribers, in-memory usrloc).

    async with Kamailio(tmp_path / "kam", qop=True, record_route=False) as kam:
        ...  # register against kam.address, call sip:agent@{kam.address}
        assert await kam.registered_contacts("agent")

Subscribers (domain 127.0.0.1): agent/agentpw and caller/callerpw (see ``USERS``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from .common import (
    LOOPBACK,
    PEERS_DIR,
    end_process,
    fill_template,
    free_udp_port,
    start_process,
    which,
)

TEMPLATE_DIR = PEERS_DIR / "kamailio"
USERS: dict[str, str] = {"agent": "agentpw", "caller": "callerpw"}
DOMAIN = LOOPBACK


@dataclass(frozen=True)
class Binding:
    """One usrloc contact as shown by ``kamcmd ul.dump``."""

    aor: str
    uri: str
    expires: int | None
    received: str | None = None
    user_agent: str | None = None
    call_id: str | None = None
    cseq: int | None = None


def parse_ul_dump(text: str) -> list[Binding]:
    """Parse ``kamcmd ul.dump`` output (Kamailio 5.x text rendering of the RPC structure)."""
    bindings: list[Binding] = []
    aor: str | None = None
    current: dict[str, str] | None = None

    def flush() -> None:
        nonlocal current
        if current is not None and aor is not None and "Address" in current:
            expires = current.get("Expires", "")
            bindings.append(
                Binding(
                    aor=aor,
                    uri=current["Address"],
                    expires=int(expires) if re.fullmatch(r"-?\d+", expires) else None,
                    received=_not_set(current.get("Received")),
                    user_agent=_not_set(current.get("User-Agent")),
                    call_id=_not_set(current.get("Call-ID")),
                    cseq=int(current["CSeq"]) if current.get("CSeq", "").isdigit() else None,
                )
            )
        current = None

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("AoR:"):
            flush()
            aor = line.partition(":")[2].strip()
        elif line.startswith("Contact:") and line.endswith("{"):
            flush()
            current = {}
        elif current is not None and ":" in line:
            key, _, value = line.partition(":")
            current.setdefault(key.strip(), value.strip())
        elif current is not None and line == "}":
            flush()
    flush()
    return bindings


def _not_set(value: str | None) -> str | None:
    if value is None or value in ("[not set]", "n/a", ""):
        return None
    return value


def _aor_user(aor: str) -> str:
    aor = aor.removeprefix("sip:")
    return aor.split("@", 1)[0]


class Kamailio:
    """A Kamailio registrar/proxy on UDP 127.0.0.1:``port``.

    ``qop``: challenges carry qop="auth" (else plain RFC 2069-style digest).
    ``record_route``: initial INVITEs are record-routed, so ACK/BYE come through the proxy
    with Route headers.  ``proxy_auth``: REGISTER is challenged with 407 Proxy-Authenticate
    (``proxy_challenge``/``proxy_authorize``) instead of 401 WWW-Authenticate.
    ``single_contact``: Asterisk-style AORs (max_contacts=1, remove_existing=yes): a REGISTER
    replaces the other contacts, and OPTIONS is challenged and answered by the registrar.
    ``invite_auth``: initial INVITEs are challenged with 407 (a trunk taking outbound calls).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        qop: bool = True,
        record_route: bool = False,
        proxy_auth: bool = False,
        single_contact: bool = False,
        invite_auth: bool = False,
        port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.single_contact = single_contact
        self.invite_auth = invite_auth
        self.qop = qop
        self.record_route = record_route
        self.proxy_auth = proxy_auth
        self.port = port if port is not None else free_udp_port()
        self.host = LOOPBACK
        self.rundir = self.workdir / "run"
        self.dbdir = self.workdir / "db"
        self.cfg_path = self.workdir / "kamailio.cfg"
        self.log_path = self.workdir / "kamailio.log"
        self.ctl_socket = self.rundir / "kamailio_ctl"
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self.starts = 0

    # -- addresses ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        """``sip:127.0.0.1:PORT`` (registrar / outbound proxy URI)."""
        return f"sip:{self.address}"

    @property
    def domain(self) -> str:
        return DOMAIN

    def aor(self, user: str) -> str:
        """``sip:USER@127.0.0.1:PORT`` — the URI to call a registered user through the proxy."""
        return f"sip:{user}@{self.address}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle ------------------------------------------------------------------------
    def write_config(self) -> Path:
        """Fill the cfg template and copy the db_text tables into ``workdir``."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.dbdir.mkdir(parents=True, exist_ok=True)
        for table in (TEMPLATE_DIR / "db").iterdir():
            shutil.copyfile(table, self.dbdir / table.name)
        defines = []
        if self.record_route:
            defines.append("#!define WITH_RECORD_ROUTE")
        if self.proxy_auth:
            defines.append("#!define WITH_PROXY_AUTH")
        if self.single_contact:
            defines.append("#!define WITH_SINGLE_CONTACT")
        if self.invite_auth:
            defines.append("#!define WITH_INVITE_AUTH")
        template = TEMPLATE_DIR / "kamailio.cfg.in"
        text = fill_template(
            template.read_text(),
            {
                "RUNDIR": self.rundir,
                "DBDIR": self.dbdir,
                "PORT": self.port,
                "QOP": "1" if self.qop else "0",
                "DEFINES": "\n".join(defines),
            },
            source=str(template),
        )
        self.cfg_path.write_text(text)
        return self.cfg_path

    async def start(self, timeout: float = 10.0) -> None:
        """Start Kamailio and wait until it answers SIP and its ctl socket."""
        if self.running:
            return
        self.write_config()
        self.ctl_socket.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1} port {self.port} =====\n".encode())
        log.flush()
        self._log_file = log
        args = [
            which("kamailio"),
            "-f", str(self.cfg_path),
            "-DD", "-E",
            "-m", "64", "-M", "8",
            "-Y", str(self.rundir),
            "-P", str(self.rundir / "kamailio.pid"),
        ]  # fmt: skip
        self._proc = await start_process(
            args, cwd=self.workdir, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        self.starts += 1
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(
                    f"kamailio exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self.ctl_socket.exists() and await asyncio.to_thread(self.ping, 0.2):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"kamailio not answering within {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def ping(self, timeout: float = 0.5) -> bool:
        """Send an out-of-dialog OPTIONS for an unregistered user; True if any SIP response
        (it answers 404) comes back within ``timeout`` s."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.settimeout(timeout)
            lport = sock.getsockname()[1]
            tag = secrets.token_hex(4)
            msg = (
                f"OPTIONS sip:rig-ping@{self.address} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{lport};branch=z9hG4bK{tag};rport\r\n"
                f"From: <sip:rig@{LOOPBACK}>;tag={tag}\r\n"
                f"To: <sip:rig-ping@{LOOPBACK}>\r\n"
                f"Call-ID: ping-{tag}@{LOOPBACK}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            try:
                sock.sendto(msg.encode(), (self.host, self.port))
                data, _ = sock.recvfrom(65535)
            except OSError:
                return False
            return data.startswith(b"SIP/2.0 ")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop Kamailio (SIGTERM, then SIGKILL); the in-memory registrations are lost."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await end_process(proc, grace=timeout)
        log, self._log_file = self._log_file, None
        if log is not None:
            log.close()

    async def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port (registrations are gone afterwards)."""
        await self.stop()
        await self.start(timeout)

    async def __aenter__(self) -> Kamailio:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- inspection -----------------------------------------------------------------------
    async def rpc(self, *command: str, timeout: float = 5.0) -> str:
        """Run ``kamcmd -s unix:RUNDIR/kamailio_ctl COMMAND...`` and return its stdout."""
        proc = await start_process([which("kamcmd"), "-s", f"unix:{self.ctl_socket}", *command])
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            await end_process(proc)
            raise
        if proc.returncode != 0:
            raise RuntimeError(
                f"kamcmd {' '.join(command)} failed ({proc.returncode}): "
                f"{err.decode(errors='replace')}{out.decode(errors='replace')}"
            )
        return out.decode(errors="replace")

    async def bindings(self, aor_user: str | None = None) -> list[Binding]:
        """All usrloc bindings (of ``aor_user`` only, if given)."""
        found = parse_ul_dump(await self.rpc("ul.dump"))
        if aor_user is None:
            return found
        return [b for b in found if _aor_user(b.aor) == aor_user]

    async def registered_contacts(self, aor_user: str) -> list[str]:
        """Contact URIs currently registered for ``aor_user`` (e.g. "agent")."""
        return [b.uri for b in await self.bindings(aor_user) if (b.expires or 0) > 0]

    async def wait_registered(
        self, aor_user: str, *, timeout: float = 10.0, contains: str | None = None
    ) -> list[str]:
        """Poll until ``aor_user`` has a contact (containing ``contains``, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            contacts = await self.registered_contacts(aor_user)
            if contacts and (contains is None or any(contains in c for c in contacts)):
                return contacts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{aor_user} not registered within {timeout} s (contacts: {contacts})\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    def log_text(self) -> str:
        """Everything Kamailio logged so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
