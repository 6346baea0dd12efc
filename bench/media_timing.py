#!/usr/bin/env python3
"""Media timing benchmark: outgoing RTP pacing and INVITE-to-200 time, measured from a capture.

    python bench/media_timing.py                      # every scenario (about 1.5 minutes)
    python bench/media_timing.py --only ours --calls 1
    python bench/media_timing.py --only pyvoip --calls 1 20 --seconds 15
    python bench/media_timing.py --only invite --invite-calls 100
    python bench/media_timing.py --only ours --app echo --calls 1 50 100 200   # capacity

Scenarios (``--only``; default all of them):

``ours``
    A real agent process (``sipagent serve --app player``, peer-to-peer, loopback) plays a
    mu-law file to N concurrent SIPp callers (``tests/peers/sipp/uac_call.xml``, which streams
    audio to the agent, so the agent receives media as well). With ``--app echo`` the agent
    sends each caller's stream back instead (the capacity measure: every frame in is a frame
    out, through the jitter buffer, the app and the playout queue). The agent's admission
    limits are raised so that one SIPp may start all N calls within a second. ``tcpdump`` on
    ``lo`` records the agent's RTP and SIP; per stream we take the inter-arrival interval of
    consecutive packets minus 20 ms. The agent's RTP port of each call comes from its 200 OK
    SDP, so other traffic on ``lo`` (other agents, other tests) is never counted.
    INVITE-to-200 is also measured.
``pyvoip``
    Stock pyVoIP 1.6.8: N ``pyVoIP.RTP.RTPClient`` instances in a separate worker process (this
    script with ``--pyvoip-worker``), each started as pyVoIP does (own receive and transmit
    threads) and given the audio through ``RTPClient.write`` (what ``VoIPCall.write_audio``
    calls), sending to a sink port. This process feeds each client 20 ms PCMU packets, as SIPp
    does for the agent. Captured and analysed the same way.
``invite``
    INVITE-to-200 over sequential calls (SIPp ``-l 1``) to the agent.

Interval statistics cover the steady state: the window in which every stream of the run is up,
minus the first ``--warmup`` seconds (so with one call: each stream minus its first 0.5 s).
Intervals across a sequence-number gap (a packet the capture lost) are left out and counted as
"seq gaps". Percentiles are numpy's default (linear interpolation). "drift" is how far a
stream's wall clock got from its RTP clock over the window (elapsed capture time minus elapsed
RTP timestamp / 8000): an absolute-deadline sender stays near 0, a sleep-relative sender
accumulates its oversleep. "skipped slots" counts frame slots a stream's RTP timestamps jump
over (frames never sent: the sender gave them up after a stall), as a share of all slots.
"loop-wide stalls" counts 20 ms windows in which at least half of the streams had an interval
more than 5 ms off: one process stalling all of its calls at once, not one stream's bad luck.
"agent CPU" is the agent process's user + system time over the scenario's wall time (100 % =
one core).

Results: a markdown table on stdout and JSON in ``bench/results/media_timing.json``.
Artifacts (pcaps, agent log, SIPp logs) go to a temporary directory, kept with ``--keep`` or
when something looked wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test kit, as tests.kit

from benchlib import (  # noqa: E402
    cpu_times,
    free_port,
    machine_info,
    run_benchmark,
    sipagent_command,
    wait_agent_bound,
)

from tests.kit.peerlib.capture import Capture, Datagram, parse_rtp, read_udp_datagrams  # noqa: E402
from tests.kit.peerlib.common import end_process, start_process  # noqa: E402
from tests.kit.peerlib.sipp import Sipp  # noqa: E402

LOOPBACK = "127.0.0.1"
RATE = 8000
FRAME_S = 0.020
FRAME_BYTES = 160
DEFAULT_OUT = REPO / "bench" / "results" / "media_timing.json"
SCENARIOS = ("ours", "pyvoip", "invite")

TARGET_INVITE_MS = 50.0
# Without --immediate-mode, tcpdump (libpcap TPACKET_V3, 1 s buffer timeout) gets packets in
# blocks retired at most every second: stopping it sooner after the last packet loses them.
CAPTURE_LINGER_S = 1.5
IDLE_CPU_BUSY_PCT = 15.0  # busier than this just before a scenario: flagged as not idle
LATE_INTERVAL_MS = 5.0  # an interval this far off 20 ms counts as late (loop-wide stalls)


def target_p99_ms(calls: int) -> float:
    """Issue targets: p99 interval error <= 2 ms at 1 call, <= 5 ms at 20 (and above 1)."""
    return 2.0 if calls <= 1 else 5.0


# ---------------------------------------------------------------------------------------------
# audio


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    n = round(seconds * RATE)
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / RATE)


def to_ulaw(signal_: np.ndarray) -> bytes:
    """G.711 mu-law by the continuous companding law (exactness is irrelevant here)."""
    x = np.clip(signal_, -1.0, 1.0)
    y = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    code = np.clip(np.round(np.abs(y) * 127), 0, 127).astype(np.uint8)
    sign = np.where(x < 0, 0x00, 0x80).astype(np.uint8)
    return bytes(~(sign | code) & 0xFF)


def to_u8_linear(signal_: np.ndarray) -> bytes:
    """8-bit unsigned linear: what pyVoIP's ``write_audio`` takes."""
    return bytes(np.clip(np.round(signal_ * 127 + 128), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# analysis


@dataclass
class Stream:
    src: tuple[str, int]
    ssrc: int
    dst: tuple[str, int]
    times: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    tss: list[int] = field(default_factory=list)
    markers: list[bool] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.src[0]}:{self.src[1]}/{self.ssrc:#010x}"


def rtp_streams(
    datagrams: Iterable[Datagram], *, src_ports: set[int] | None = None, dst_port: int | None = None
) -> list[Stream]:
    """RTP packets grouped per (source address, SSRC), in capture order."""
    streams: dict[tuple[tuple[str, int], int], Stream] = {}
    for d in datagrams:
        if src_ports is not None and d.src[1] not in src_ports:
            continue
        if dst_port is not None and d.dst[1] != dst_port:
            continue
        pkt = parse_rtp(d)
        if pkt is None:
            continue
        stream = streams.setdefault((d.src, pkt.ssrc), Stream(d.src, pkt.ssrc, d.dst))
        stream.times.append(d.time)
        stream.seqs.append(pkt.seq)
        stream.tss.append(pkt.ts)
        stream.markers.append(bool(pkt.marker))
    return list(streams.values())


def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
    }


def interval_stats(streams: list[Stream], warmup: float) -> dict[str, Any]:
    """|inter-arrival - 20 ms| over the window in which all streams are up (minus warmup)."""
    usable = [s for s in streams if len(s.times) >= 2]
    if not usable:
        return {"streams": len(streams), "intervals": 0, "error_ms": percentiles([])}
    window = (max(s.times[0] for s in usable) + warmup, min(s.times[-1] for s in usable))
    errors: list[np.ndarray] = []
    intervals: list[np.ndarray] = []
    per_stream = []
    seq_gaps = 0
    talkspurt_starts = 0
    skipped_slots = 0
    slots = 0
    late_windows: dict[int, set[int]] = {}  # 20 ms window index -> streams late in it
    drifts: list[float] = []
    for s in usable:
        t = np.asarray(s.times)
        mask = (t >= window[0]) & (t <= window[1])
        idx = np.nonzero(mask)[0]
        if idx.size < 2:
            continue
        tt = t[idx]
        # Both senders number every packet they send, so a sequence gap is a packet the capture
        # (or the socket) lost: the interval across it says nothing about pacing.
        contiguous = (np.diff(np.asarray(s.seqs)[idx]) % 65536) == 1
        seq_gaps += int(np.count_nonzero(~contiguous))
        # A packet with the marker bit starts a talkspurt (RFC 3550 5.1, RFC 3551 4.1): the
        # sender may send it early (a reply's first frame goes out at once) and the receiver
        # re-syncs its playout there, so that interval is not a pacing error.
        talkspurt = np.asarray(s.markers, dtype=bool)[idx][1:]
        talkspurt_starts += int(np.count_nonzero(talkspurt & contiguous))
        contiguous &= ~talkspurt
        d = np.diff(tt)[contiguous]
        err = np.abs(d - FRAME_S) * 1000
        errors.append(err)
        # A timestamp jump between consecutive sequence numbers: slots the sender gave up.
        advance = (np.diff(np.asarray(s.tss)[idx]) % 2**32)[contiguous] // FRAME_BYTES
        skipped_slots += int(np.sum(advance - 1))
        slots += int(np.sum(advance))
        for at in tt[1:][contiguous][err > LATE_INTERVAL_MS]:
            late_windows.setdefault(int(at / FRAME_S), set()).add(len(per_stream))
        intervals.append(d * 1000)
        ts_first, ts_last = s.tss[idx[0]], s.tss[idx[-1]]
        rtp_elapsed = ((ts_last - ts_first) % 2**32) / RATE
        drift_ms = ((tt[-1] - tt[0]) - rtp_elapsed) * 1000
        drifts.append(drift_ms)
        per_stream.append(
            {
                "stream": s.label,
                "packets": len(s.times),
                "duration_s": round(s.times[-1] - s.times[0], 3),
                "window_intervals": int(d.size),
                "error_ms": percentiles(err),
                "drift_ms": round(drift_ms, 3),
            }
        )
    all_err = np.concatenate(errors) if errors else np.array([])
    all_int = np.concatenate(intervals) if intervals else np.array([])
    return {
        "streams": len(streams),
        "destinations": sorted({f"{s.dst[0]}:{s.dst[1]}" for s in streams}),
        "window_s": round(max(0.0, window[1] - window[0]), 3),
        "intervals": int(all_err.size),
        "error_ms": percentiles(all_err),
        "mean_interval_ms": round(float(all_int.mean()), 4) if all_int.size else None,
        "intervals_over_5ms_error": int(np.count_nonzero(all_err > 5.0)),
        "seq_gaps": seq_gaps,
        "talkspurt_starts": talkspurt_starts,
        "skipped_slots": skipped_slots,
        "skipped_slots_pct": round(100.0 * skipped_slots / slots, 3) if slots else None,
        "loop_wide_stalls": (
            sum(1 for late in late_windows.values() if len(late) * 2 >= len(per_stream))
            if len(per_stream) >= 2
            else None
        ),
        "drift_ms_max_abs": round(max((abs(x) for x in drifts), default=0.0), 3),
        "drift_ms_mean": round(float(np.mean(drifts)), 3) if drifts else None,
        "per_stream": per_stream,
    }


_HEADER_ALIASES = {"i": "call-id", "l": "content-length"}


@dataclass
class SipCall:
    call_id: str
    invite_at: float | None = None
    ok_at: float | None = None
    final_status: int | None = None
    agent_rtp_port: int | None = None

    @property
    def invite_to_200_ms(self) -> float | None:
        if self.invite_at is None or self.ok_at is None:
            return None
        return (self.ok_at - self.invite_at) * 1000


def _sip_headers(text: str) -> tuple[str, dict[str, str], str]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            name = key.strip().lower()
            headers.setdefault(_HEADER_ALIASES.get(name, name), value.strip())
    return lines[0].strip(), headers, body


def sip_calls(datagrams: Iterable[Datagram], agent_port: int) -> dict[str, SipCall]:
    """Per Call-ID: first INVITE to the agent, first final response to it from the agent."""
    calls: dict[str, SipCall] = {}
    for d in datagrams:
        if agent_port not in (d.src[1], d.dst[1]) or parse_rtp(d) is not None:
            continue
        try:
            first, headers, body = _sip_headers(d.payload.decode("utf-8", errors="replace"))
        except ValueError:
            continue
        call_id = headers.get("call-id")
        if not call_id:
            continue
        if d.dst[1] == agent_port and first.startswith("INVITE "):
            call = calls.setdefault(call_id, SipCall(call_id))
            if call.invite_at is None:
                call.invite_at = d.time
        elif d.src[1] == agent_port and first.startswith("SIP/2.0 "):
            cseq = headers.get("cseq", "").split()
            if not cseq or cseq[-1].upper() != "INVITE" or call_id not in calls:
                continue
            status = int(first.split()[1])
            call = calls[call_id]
            if status < 200 or call.final_status is not None:
                continue
            call.final_status = status
            if status == 200:
                call.ok_at = d.time
                media = re.search(r"^m=audio (\d+) ", body, re.MULTILINE)
                call.agent_rtp_port = int(media.group(1)) if media else None
    return calls


def invite_stats(calls: dict[str, SipCall]) -> dict[str, Any]:
    ordered = sorted(calls.values(), key=lambda c: c.invite_at or 0.0)
    times = [c.invite_to_200_ms for c in ordered if c.invite_to_200_ms is not None]
    failed = {c.call_id: c.final_status for c in ordered if c.invite_to_200_ms is None}
    stats = percentiles(times)
    return {
        "invites": len(ordered),
        "answered_200": len(times),
        "not_answered": failed,
        "ms": stats,
        "first_call_ms": round(times[0], 3) if times else None,
        "target_ms": TARGET_INVITE_MS,
        "meets_target_p99": stats["p99"] is not None and stats["p99"] < TARGET_INVITE_MS,
        "meets_target_max": stats["max"] is not None and stats["max"] < TARGET_INVITE_MS,
    }


def tcpdump_drops(capture: Capture) -> int | None:
    match = re.search(r"(\d+) packets? dropped by kernel", capture.stderr)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# the pyVoIP worker (a separate process: its threads must not share a GIL with anything else)


def pyvoip_worker(calls: int, sink_port: int, seconds: float) -> int:
    import warnings

    warnings.simplefilter("ignore")
    import pyVoIP.VoIP  # noqa: F401  (pyVoIP.RTP alone hits a circular import)
    from pyVoIP.RTP import PayloadType, RTPClient, TransmitType

    audio = to_u8_linear(tone(seconds))
    clients: list[RTPClient] = []
    ports: list[int] = []
    for _ in range(calls):
        for _attempt in range(50):
            port = free_port()
            client = RTPClient(
                {0: PayloadType.PCMU}, LOOPBACK, port, LOOPBACK, sink_port, TransmitType.SENDRECV
            )
            try:
                client.start()
            except OSError:
                continue
            break
        else:
            raise RuntimeError("no free port for an RTPClient")
        clients.append(client)
        ports.append(port)
    for client in clients:
        client.write(audio)  # == VoIPCall.write_audio(audio) for a call with one RTP client
    print(
        json.dumps({"ready": True, "ports": ports, "ssrcs": [c.outSSRC for c in clients]}),
        flush=True,
    )
    time.sleep(seconds)
    for client in clients:
        client.stop()
    print(json.dumps({"done": True}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# orchestration


class Sink(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        pass


async def feed_rtp(ports: list[int], stop: asyncio.Event) -> None:
    """Send 20 ms PCMU packets to each of ``ports`` (the pyVoIP clients' inbound media)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        payload = to_ulaw(tone(FRAME_S, 300.0))
        start, k = loop.time(), 0
        while not stop.is_set():
            for i, port in enumerate(ports):
                header = struct.pack(
                    "!BBHII", 0x80, 0, k & 0xFFFF, (k * FRAME_BYTES) & 0xFFFFFFFF, 0x5EED0000 + i
                )
                with contextlib.suppress(OSError):
                    sock.sendto(header + payload, (LOOPBACK, port))
            k += 1
            await asyncio.sleep(max(0.0, start + k * FRAME_S - loop.time()))


def cpu_busy_percent(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (blocking; call before starting a scenario)."""
    try:
        total0, idle0 = cpu_times()
        time.sleep(seconds)
        total1, idle1 = cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (total - (idle1 - idle0)) / total, 1) if total > 0 else None


def foreign_activity(exclude: str) -> list[str]:
    """Other peer/test processes running now (not ours): they make the machine non-idle."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in args if a)
        names = {Path(a.decode(errors="replace")).name for a in args[:3] if a}
        if exclude in text or "--pyvoip-worker" in text:
            continue
        if names & {"sipp", "tcpdump", "baresip", "kamailio", "sipagent", "pytest"} or (
            "pytest" in text and "python" in text
        ):
            found.append(text[:160])
    return sorted(found)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.agent_port = free_port()
        self.agent_proc: asyncio.subprocess.Process | None = None
        self.agent_log = workdir / "agent.log"
        self._agent_log_fh: Any = None
        self.agent_cmd: list[str] = []
        self.anomalies: list[str] = []

    # -- agent -------------------------------------------------------------------------------

    async def start_agent(self) -> None:
        player = self.workdir / "agent_play.ulaw"
        player.write_bytes(to_ulaw(tone(self.args.seconds + 2.0)))
        app = ["--app", "echo"] if self.args.app == "echo" else ["--app", "player"]
        if self.args.app == "player":
            app += ["--player-file", str(player)]
        self.agent_cmd = [
            *sipagent_command(),
            "serve",
            "--bind",
            f"{LOOPBACK}:{self.agent_port}",
            "--rtp-ports",
            self.args.rtp_ports,
            *app,
            "--max-calls",
            str(max(50, *self.args.calls)),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
        # One SIPp starts every call of a scenario within a second, from one address: the
        # flood limits (meant for strangers) would answer most of them 503.
        busiest = max(self.args.calls)
        env["SIPAGENT_INVITES_PER_SECOND"] = str(max(20, 2 * busiest))
        env["SIPAGENT_MAX_UNCONFIRMED_PER_SOURCE"] = str(max(8, busiest))
        env["COLUMNS"] = "240"  # rich: one log record per line
        env["SIPAGENT_WORKERS"] = "1"  # one process measured, not a supervisor of several
        self._agent_log_fh = self.agent_log.open("wb")
        self.agent_proc = await start_process(
            self.agent_cmd,
            cwd=self.workdir,
            stdout=self._agent_log_fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            await wait_agent_bound(self.agent_proc, [self.agent_port], self.agent_log)
            await asyncio.sleep(0.3)  # bound before the event loop serves: let it settle
        except BaseException:
            await self.stop_agent()
            raise

    async def stop_agent(self) -> None:
        if self.agent_proc is not None:
            code = await end_process(self.agent_proc, sig=signal.SIGTERM, grace=5.0)
            if code not in (0, None):
                self.anomalies.append(f"agent exited with code {code} on SIGTERM")
            self.agent_proc = None
        if self._agent_log_fh is not None:
            self._agent_log_fh.close()
            self._agent_log_fh = None

    def agent_cpu_seconds(self) -> float | None:
        """User + system CPU time the agent process has used so far."""
        if self.agent_proc is None:
            return None
        try:
            stat = Path(f"/proc/{self.agent_proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def agent_log_size(self) -> int:
        return self.agent_log.stat().st_size if self.agent_log.exists() else 0

    def agent_log_problems(self, since: int) -> list[str]:
        with self.agent_log.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
        return [line.rstrip() for line in text.splitlines() if pattern.search(line)]

    def _note_foreign(self, name: str) -> dict[str, Any]:
        """What else was running as the scenario started (the agent, if any, idle)."""
        foreign = foreign_activity(str(self.workdir))
        busy = cpu_busy_percent(1.0)
        if foreign:
            self.anomalies.append(
                f"{name}: machine not idle, {len(foreign)} other peer/test process(es) running, "
                f"e.g. {foreign[0]}"
            )
        if busy is not None and busy > IDLE_CPU_BUSY_PCT:
            self.anomalies.append(
                f"{name}: machine not idle, CPUs {busy:.0f}% busy in the second before the run"
            )
        return {"cpu_busy_pct_before": busy, "other_processes": foreign}

    def _check_agent_alive(self) -> None:
        if self.agent_proc is None or self.agent_proc.returncode is not None:
            raise RuntimeError(f"agent not running; log: {self.agent_log}")

    # -- scenarios ---------------------------------------------------------------------------

    def _sipp(self, run_dir: Path, calls: int, hold_ms: int, audio: Path, concurrent: int) -> Sipp:
        timeout = hold_ms / 1000 + calls * 1.0 + 15.0 if concurrent == 1 else hold_ms / 1000 + 20
        return Sipp(
            run_dir,
            "uac_call.xml",
            remote=f"{LOOPBACK}:{self.agent_port}",
            service="agent",
            params={"AUDIO": audio, "HOLD_MS": hold_ms},
            calls=calls,
            timeout=timeout,
            extra_args=["-l", str(concurrent), "-r", str(max(concurrent, 10)), "-rp", "1000"],
            name=f"{calls}calls-l{concurrent}",
        )

    async def _run_sipp_captured(
        self, name: str, calls: int, concurrent: int, hold_ms: int, caller_audio_s: float
    ) -> tuple[Any, list[Datagram], dict[str, Any]]:
        self._check_agent_alive()
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        audio = run_dir / "caller.ulaw"
        audio.write_bytes(to_ulaw(tone(caller_audio_s, 300.0)))
        first, last = self.args.rtp_ports.split("-")
        bpf = f"udp and (port {self.agent_port} or src portrange {first}-{last})"
        capture = Capture(run_dir / "capture.pcap", bpf, linger=CAPTURE_LINGER_S)
        sipp = self._sipp(run_dir, calls, hold_ms, audio, concurrent)
        log_from = self.agent_log_size()
        foreign = self._note_foreign(name)
        cpu_before, wall_before = self.agent_cpu_seconds(), time.monotonic()
        async with capture:
            try:
                await sipp.start(wait_bound=False)
                result = await sipp.wait()
            finally:
                await sipp.stop()
        cpu_after, wall = self.agent_cpu_seconds(), time.monotonic() - wall_before
        agent_cpu_pct = (
            round(100.0 * (cpu_after - cpu_before) / wall, 1)
            if cpu_before is not None and cpu_after is not None and wall > 0
            else None
        )
        datagrams = read_udp_datagrams(capture.path)
        info = {
            "sipp_command": shlex.join(sipp.args()),
            "sipp_returncode": result.returncode,
            "sipp_timed_out": result.timed_out,
            "tcpdump_dropped": tcpdump_drops(capture),
            "machine_before": foreign,
            "agent_cpu_pct": agent_cpu_pct,
            "artifacts": str(run_dir),
        }
        if not result.ok:
            self.anomalies.append(
                f"{name}: SIPp failed (rc={result.returncode}, "
                f"timed_out={result.timed_out}); see {sipp.workdir}"
            )
            info["sipp_stdout_tail"] = result.stdout.splitlines()[-25:]
            info["sipp_errors_tail"] = result.error_log.splitlines()[-25:]
        if info["tcpdump_dropped"]:
            self.anomalies.append(f"{name}: tcpdump dropped {info['tcpdump_dropped']} packets")
        problems = self.agent_log_problems(log_from)
        info["agent_log_problems"] = problems
        if problems:
            self.anomalies.append(
                f"{name}: {len(problems)} WARNING/ERROR line(s) in the agent "
                f"log, first: {problems[0]}"
            )
        return result, datagrams, info

    async def scenario_ours(self, calls: int) -> dict[str, Any]:
        name = f"ours-{calls}" if self.args.app == "player" else f"ours-{self.args.app}-{calls}"
        hold_ms = int(self.args.seconds * 1000)
        _, datagrams, info = await self._run_sipp_captured(
            name, calls, calls, hold_ms, caller_audio_s=self.args.seconds
        )
        sip = sip_calls(datagrams, self.agent_port)
        ports = {c.agent_rtp_port for c in sip.values() if c.agent_rtp_port}
        streams = rtp_streams(datagrams, src_ports=ports)
        stats = interval_stats(streams, self.args.warmup)
        if len(streams) != calls:
            self.anomalies.append(
                f"{name}: expected {calls} agent RTP streams, found {len(streams)}"
            )
        target = target_p99_ms(calls)
        p99 = stats["error_ms"]["p99"]
        return {
            "scenario": name,
            "sender": "sipagent" if self.args.app == "player" else f"sipagent {self.args.app}",
            "app": self.args.app,
            "calls": calls,
            "hold_s": self.args.seconds,
            **stats,
            "target_p99_ms": target,
            "meets_target": p99 is not None and p99 <= target,
            "invite_to_200": invite_stats(sip),
            **info,
        }

    async def scenario_invite(self, calls: int) -> dict[str, Any]:
        name = f"invite-seq-{calls}"
        _, datagrams, info = await self._run_sipp_captured(
            name, calls, 1, hold_ms=100, caller_audio_s=0.1
        )
        return {
            "scenario": name,
            "calls": calls,
            "concurrent": 1,
            **invite_stats(sip_calls(datagrams, self.agent_port)),
            **info,
        }

    async def scenario_pyvoip(self, calls: int) -> dict[str, Any]:
        name = f"pyvoip-{calls}"
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        sink_transport, _ = await loop.create_datagram_endpoint(Sink, local_addr=(LOOPBACK, 0))
        sink_port = int(sink_transport.get_extra_info("sockname")[1])
        capture = Capture(
            run_dir / "capture.pcap", f"udp and dst port {sink_port}", linger=CAPTURE_LINGER_S
        )
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--pyvoip-worker",
            str(calls),
            "--sink-port",
            str(sink_port),
            "--seconds",
            str(self.args.seconds),
        ]
        stop_feed = asyncio.Event()
        feeder: asyncio.Task[None] | None = None
        worker: asyncio.subprocess.Process | None = None
        stderr_path = run_dir / "worker.stderr"
        ready: dict[str, Any] = {}
        foreign = self._note_foreign(name)
        try:
            async with capture:
                with stderr_path.open("wb") as err_fh:
                    worker = await start_process(cmd, stderr=err_fh)
                    assert worker.stdout is not None
                    line = await asyncio.wait_for(worker.stdout.readline(), 30.0)
                    if not line:
                        raise RuntimeError(f"pyVoIP worker failed: {stderr_path.read_text()}")
                    ready = json.loads(line)
                    if self.args.pyvoip_inbound:
                        feeder = asyncio.create_task(feed_rtp(ready["ports"], stop_feed))
                    done = await asyncio.wait_for(
                        worker.stdout.readline(), self.args.seconds + 30.0
                    )
                    code = await asyncio.wait_for(worker.wait(), 15.0)
                    if not done or code != 0:
                        self.anomalies.append(f"{name}: worker exited {code}; see {stderr_path}")
        finally:
            stop_feed.set()
            if feeder is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            if worker is not None:
                await end_process(worker)
            sink_transport.close()
        datagrams = read_udp_datagrams(capture.path)
        streams = rtp_streams(datagrams, dst_port=sink_port, src_ports=set(ready.get("ports", [])))
        if len(streams) != calls:
            self.anomalies.append(f"{name}: expected {calls} streams, found {len(streams)}")
        drops = tcpdump_drops(capture)
        if drops:
            self.anomalies.append(f"{name}: tcpdump dropped {drops} packets")
        return {
            "scenario": name,
            "sender": "pyVoIP 1.6.8 RTPClient.write",
            "calls": calls,
            "hold_s": self.args.seconds,
            **interval_stats(streams, self.args.warmup),
            "worker_command": shlex.join(cmd),
            "inbound_fed": self.args.pyvoip_inbound,
            "tcpdump_dropped": drops,
            "machine_before": foreign,
            "artifacts": str(run_dir),
        }

    async def run(self) -> dict[str, list[dict[str, Any]]]:
        results: dict[str, list[dict[str, Any]]] = {"media": [], "invite": []}
        only = set(self.args.only)

        async def attempt(kind: str, coro: Any, label: str) -> None:
            try:
                result = await coro
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as error:
                self.anomalies.append(f"{label}: {type(error).__name__}: {error}")
                traceback.print_exc()
                result = {"scenario": label, "error": f"{type(error).__name__}: {error}"}
            results[kind].append(result)
            print(f"  done: {label}", file=sys.stderr, flush=True)

        if only & {"ours", "invite"}:
            await self.start_agent()
            try:
                if "ours" in only:
                    for n in self.args.calls:
                        await attempt("media", self.scenario_ours(n), f"ours-{self.args.app}-{n}")
                if "invite" in only:
                    n = self.args.invite_calls
                    await attempt("invite", self.scenario_invite(n), f"invite-seq-{n}")
            finally:
                await self.stop_agent()
        if "pyvoip" in only:
            for n in self.args.calls:
                await attempt("media", self.scenario_pyvoip(n), f"pyvoip-{n}")
        return results


# ---------------------------------------------------------------------------------------------
# report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    out = [
        "### Outgoing RTP inter-packet interval error (|interval - 20 ms|, capture on lo)",
        "",
        "| scenario | sender | calls | streams | intervals | p50 ms | p99 ms | max ms "
        "| mean interval ms | drift ms (max abs) / window s | seq gaps | skipped slots "
        "| loop-wide stalls | agent CPU | target p99 | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in report["results"]["media"]:
        if "error" in r:
            out.append(f"| {r['scenario']} | ERROR: {r['error']} |" + " |" * 14)
            continue
        e = r["error_ms"]
        is_ours = r.get("sender", "").startswith("sipagent")
        target = f"<= {r['target_p99_ms']:g} ms" if is_ours else "(reference)"
        verdict = ("PASS" if r["meets_target"] else "FAIL") if is_ours else "-"
        out.append(
            f"| {r['scenario']} | {r['sender']} | {r['calls']} | {r['streams']} | "
            f"{r['intervals']} | {_fmt(e['p50'])} | {_fmt(e['p99'])} | {_fmt(e['max'])} | "
            f"{_fmt(r['mean_interval_ms'])} | "
            f"{_fmt(r['drift_ms_max_abs'])} / {r['window_s']:.1f} | {r['seq_gaps']} | "
            f"{r.get('skipped_slots', '-')} ({_fmt(r.get('skipped_slots_pct'))} %) | "
            f"{_fmt(r.get('loop_wide_stalls'))} | {_fmt(r.get('agent_cpu_pct'))} % | "
            f"{target} | {verdict} |"
        )
    out += [
        "",
        "### INVITE-to-200 (agent SIP port, capture on lo)",
        "",
        "| scenario | INVITEs | 200 OK | p50 ms | p99 ms | max ms | first call ms | target "
        "| result (p99 / max) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    rows = list(report["results"]["invite"])
    rows += [
        dict(r["invite_to_200"], scenario=f"{r['scenario']} (media run)")
        for r in report["results"]["media"]
        if "invite_to_200" in r
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['scenario']} | ERROR: {r['error']} |" + " |" * 7)
            continue
        ms = r["ms"]
        verdict = "/".join(
            "PASS" if r[k] else "FAIL" for k in ("meets_target_p99", "meets_target_max")
        )
        out.append(
            f"| {r['scenario']} | {r['invites']} | {r['answered_200']} | {_fmt(ms['p50'])} | "
            f"{_fmt(ms['p99'])} | {_fmt(ms['max'])} | {_fmt(r['first_call_ms'])} | "
            f"< {r['target_ms']:g} ms | {verdict} |"
        )
    m = report["machine"]
    out += [
        "",
        f"machine: nproc={m['nproc']} ({m['cpu_model']}), Python {m['python']}, "
        f"{m['platform']}, {m['sipp']}; loadavg start {m['loadavg_start']} "
        f"end {m.get('loadavg_end')}",
        f"command: `{report['command']}`",
    ]
    if report["anomalies"]:
        out += ["", "anomalies:"] + [f"- {a}" for a in report["anomalies"]]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="scenarios to run (default: all)",
    )
    p.add_argument(
        "--calls",
        nargs="+",
        type=int,
        default=[1, 20],
        help="concurrent calls per media scenario (default: 1 20)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=11.0,
        help="audio per call, s (default 11: about 10 s of steady state)",
    )
    p.add_argument("--warmup", type=float, default=0.5, help="dropped from each stream, s")
    p.add_argument(
        "--app",
        choices=("player", "echo"),
        default="player",
        help="what the agent runs for the 'ours' scenarios (default: player)",
    )
    p.add_argument("--invite-calls", type=int, default=50, help="sequential INVITE-to-200 calls")
    p.add_argument("--rtp-ports", default="22000-22999", help="the agent's RTP port range")
    p.add_argument(
        "--no-pyvoip-inbound",
        dest="pyvoip_inbound",
        action="store_false",
        help="do not feed inbound RTP to the pyVoIP clients",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    p.add_argument("--time-limit", type=float, default=300.0, help="abort the run after this, s")
    p.add_argument("--pyvoip-worker", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(n < 1 for n in args.calls) or args.seconds <= args.warmup + 1:
        p.error("--calls must be >= 1 and --seconds > --warmup + 1")
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:  # clean up the same way on Ctrl-C, SIGTERM and SIGHUP
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, main_task.cancel)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "media_timing",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "cwd": str(Path.cwd()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "calls": args.calls,
            "invite_calls": args.invite_calls,
            "rtp_ports": args.rtp_ports,
            "scenarios": args.only,
            "app": args.app,
            "pyvoip_inbound": args.pyvoip_inbound,
        },
        "targets": {
            "p99_interval_error_ms": {"1": 2.0, "20": 5.0},
            "invite_to_200_ms": TARGET_INVITE_MS,
        },
    }
    bench = Bench(args, workdir)
    try:
        report["results"] = await asyncio.wait_for(bench.run(), args.time_limit)
    finally:
        report["agent_command"] = shlex.join(bench.agent_cmd) if bench.agent_cmd else None
        report["anomalies"] = bench.anomalies
        report["machine"]["loadavg_end"] = list(os.getloadavg())
        report["duration_s"] = round(time.time() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pyvoip_worker is not None:
        return pyvoip_worker(args.pyvoip_worker, args.sink_port, args.seconds)
    return run_benchmark(args, amain, markdown, workdir_prefix="sipagent-bench-")


if __name__ == "__main__":
    sys.exit(main())
