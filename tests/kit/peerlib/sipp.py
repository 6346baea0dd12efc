"""SIPp 3.6 scenarios (``tests/peers/sipp/*.xml``) run as asyncio subprocesses.

    uas = Sipp(tmp_path, "uas_call.xml", params={"AUDIO": audio / "agent.ulaw"})
    async with uas:                                   # started, listening on uas.local_port
        result = await run_sipp(tmp_path, "uac_call.xml", remote=uas.address, service="agent",
                                params={"AUDIO": audio / "pattern.ulaw", "HOLD_MS": 2000})
        result.check()
        (await uas.wait()).check()

Scenario placeholders (``@NAME@``) are filled from ``params`` over ``SCENARIO_DEFAULTS``; SIPp's
own ``[keywords]`` are left alone.  Each run gets its own directory with the filled scenario,
the ``-trace_msg`` message log, the ``-trace_err`` error log and SIPp's stdout/stderr.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .capture import write_dtmf_pcap
from .common import (
    LOOPBACK,
    PEERS_DIR,
    ProcessResult,
    communicate_with_timeout,
    end_process,
    fill_template,
    free_rtp_port,
    free_udp_port,
    start_process,
    wait_udp_bound,
    which,
)

__all__ = [
    "SCENARIO_DEFAULTS",
    "SCENARIO_DIR",
    "SipMessage",
    "Sipp",
    "SippResult",
    "free_rtp_port",
    "free_udp_port",
    "parse_message_log",
    "run_sipp",
    "write_dtmf_pcap",
]

SCENARIO_DIR = PEERS_DIR / "sipp"

# default placeholder values per scenario file name
SCENARIO_DEFAULTS: dict[str, dict[str, object]] = {
    "register.xml": {"CONTACT": "sip:[service]@[local_ip]:[local_port]", "EXPIRES": 300},
    "uac_call.xml": {"HOLD_MS": 3000},
    "uac_dtmf.xml": {"HOLD_MS": 4000, "PRE_MS": 300},
    "uac_cancel.xml": {"CANCEL_DELAY_MS": 0},
    "uac_unsupported_codec.xml": {"PT": 9, "CODEC": "G722/8000"},
    "uas_call.xml": {"BYE_WAIT_MS": 15000},
    "uas_reject.xml": {"CODE": 488, "REASON": "Not Acceptable Here"},
    "uas_ring_cancel.xml": {"CANCEL_WAIT_MS": 10000},
}

SIPP_EXIT_CODES = {
    0: "all calls succeeded",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

_counter = itertools.count(1)


@dataclass(frozen=True)
class SipMessage:
    """One message from a SIPp ``-trace_msg`` log."""

    direction: str  # "sent" | "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int | None:
        if not self.is_response:
            return None
        return int(self.first_line.split()[1])

    @property
    def method(self) -> str:
        """The request method, or for a response the CSeq method."""
        if not self.is_response:
            return self.first_line.split()[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq else ""

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, no compact forms)."""
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> list[str]:
        out = []
        head = self.text.split("\n\n", 1)[0]
        for line in head.split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    @property
    def body(self) -> str:
        parts = self.text.split("\n\n", 1)
        return parts[1] if len(parts) > 1 else ""


_LOG_SPLIT = re.compile(r"^-{20,} .*$", re.MULTILINE)


def parse_message_log(text: str) -> list[SipMessage]:
    """Split a SIPp ``-trace_msg`` log into messages (CRLFs normalised to LF)."""
    out = []
    for chunk in _LOG_SPLIT.split(text.replace("\r\n", "\n")):
        chunk = chunk.strip("\n")
        if not chunk:
            continue
        head, _, rest = chunk.partition("\n")
        if "message sent" in head:
            direction = "sent"
        elif "message received" in head:
            direction = "received"
        else:
            continue
        out.append(SipMessage(direction, rest.strip("\n") + "\n"))
    return out


@dataclass
class SippResult(ProcessResult):
    """A finished SIPp run: exit code, output, and its message/error logs."""

    scenario: Path = field(default_factory=Path)
    local_port: int = 0
    media_port: int = 0
    message_log: str = ""
    error_log: str = ""

    @property
    def messages(self) -> list[SipMessage]:
        return parse_message_log(self.message_log)

    def received(self) -> list[SipMessage]:
        return [m for m in self.messages if m.direction == "received"]

    def sent(self) -> list[SipMessage]:
        return [m for m in self.messages if m.direction == "sent"]

    def received_statuses(self, method: str | None = None) -> list[int]:
        """Status codes of the responses SIPp received (for CSeq ``method`` only, if given)."""
        return [
            m.status
            for m in self.received()
            if m.status is not None and (method is None or m.method == method)
        ]

    def received_requests(self) -> list[str]:
        return [m.method for m in self.received() if not m.is_response]

    def check(self) -> SippResult:
        """Raise AssertionError with full diagnostics unless SIPp exited 0."""
        if not self.ok:
            meaning = SIPP_EXIT_CODES.get(self.returncode or 0, "?")
            raise AssertionError(
                f"SIPp {self.scenario.name} failed ({meaning}):\n{self.describe()}"
            )
        return self


class Sipp:
    """One SIPp process running a filled-in scenario from ``tests/peers/sipp``.

    ``remote``: "host:port" to send to (omit for a UAS); ``service``: the ``-s`` user;
    ``auth``: (user, password) for ``-au``/``-ap``; ``params``: scenario placeholders.
    """

    def __init__(
        self,
        workdir: Path,
        scenario: str | Path,
        *,
        remote: str | None = None,
        service: str | None = None,
        params: Mapping[str, object] | None = None,
        auth: tuple[str, str] | None = None,
        local_port: int | None = None,
        media_port: int | None = None,
        calls: int = 1,
        timeout: float = 15.0,
        extra_args: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.template = Path(scenario) if Path(scenario).is_absolute() else SCENARIO_DIR / scenario
        if not self.template.exists():
            raise FileNotFoundError(self.template)
        stem = name or self.template.stem
        self.workdir = Path(workdir) / f"sipp-{next(_counter):02d}-{stem}"
        self.remote = remote
        self.service = service
        self.params = {**SCENARIO_DEFAULTS.get(self.template.name, {}), **(params or {})}
        self.auth = auth
        self.local_port = local_port if local_port is not None else free_udp_port()
        self.media_port = media_port if media_port is not None else free_rtp_port()
        self.calls = calls
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.scenario_path = self.workdir / self.template.name
        self.message_file = self.workdir / "messages.log"
        self.error_file = self.workdir / "errors.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._result: SippResult | None = None
        self._waiter: asyncio.Task[SippResult] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:LOCAL_PORT`` (where a UAS scenario listens)."""
        return f"{LOOPBACK}:{self.local_port}"

    @property
    def contact_uri(self) -> str:
        """A Contact URI reaching this SIPp instance (e.g. to register it at Kamailio)."""
        return f"sip:sipp@{self.address}"

    def args(self) -> list[str]:
        args = [which("sipp")]
        if self.remote:
            args.append(self.remote)
        args += ["-sf", str(self.scenario_path),
                 "-i", LOOPBACK, "-mi", LOOPBACK,
                 "-p", str(self.local_port), "-mp", str(self.media_port),
                 "-m", str(self.calls), "-nostdin",
                 "-trace_msg", "-message_file", str(self.message_file),
                 "-trace_err", "-error_file", str(self.error_file),
                 "-timeout", f"{max(1, int(self.timeout))}s", "-timeout_error"]  # fmt: skip
        if self.service:
            args += ["-s", self.service]
        if self.auth:
            args += ["-au", self.auth[0], "-ap", self.auth[1]]
        return args + self.extra_args

    def render(self) -> Path:
        """Write the filled-in scenario into this run's directory."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # comments go first: they name placeholders, and a filled-in value containing "--"
        # would make the XML invalid
        text = re.sub(r"<!--.*?-->\n?", "", self.template.read_text(), flags=re.DOTALL)
        text = fill_template(text, self.params, source=str(self.template))
        self.scenario_path.write_text(text)
        return self.scenario_path

    async def start(self, *, wait_bound: bool = True) -> None:
        """Start SIPp; by default wait until its SIP port is bound (so a UAS can be called)."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self.render()
        self._started_at = time.monotonic()
        self._proc = await start_process(self.args(), cwd=self.workdir)
        self._waiter = asyncio.create_task(self._collect())
        if wait_bound:
            try:
                await wait_udp_bound(self.local_port, timeout=5.0)
            except TimeoutError:
                if self._waiter.done():
                    raise AssertionError(
                        f"SIPp exited before binding:\n{self._waiter.result().describe()}"
                    ) from None
                raise

    async def _collect(self) -> SippResult:
        assert self._proc is not None
        out, err, timed_out = await communicate_with_timeout(
            self._proc, self.timeout + 5.0, sig=signal.SIGTERM
        )
        (self.workdir / "stdout.txt").write_bytes(out)
        (self.workdir / "stderr.txt").write_bytes(err)
        self._result = SippResult(
            args=self.args(),
            returncode=self._proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=time.monotonic() - self._started_at,
            timed_out=timed_out,
            files={"messages": self.message_file, "errors": self.error_file},
            scenario=self.scenario_path,
            local_port=self.local_port,
            media_port=self.media_port,
            message_log=_read(self.message_file),
            error_log=_read(self.error_file),
        )
        return self._result

    async def wait(self) -> SippResult:
        """Wait for SIPp to finish (it is ended ``timeout`` + 5 s after starting)."""
        if self._waiter is None:
            raise RuntimeError("not started")
        return await self._waiter

    async def run(self) -> SippResult:
        await self.start(wait_bound=False)
        return await self.wait()

    async def stop(self) -> SippResult | None:
        """End SIPp if still running and return its result."""
        if self._proc is None or self._waiter is None:
            return None
        if self._proc.returncode is None:
            await end_process(self._proc)
        return await self._waiter

    async def __aenter__(self) -> Sipp:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def run_sipp(workdir: Path, scenario: str | Path, **kwargs: Any) -> SippResult:
    """Run one scenario to completion; keyword arguments as for :class:`Sipp`."""
    return await Sipp(workdir, scenario, **kwargs).run()
