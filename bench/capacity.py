#!/usr/bin/env python3
"""Capacity benchmark: a ladder of concurrent SIPp callers against one agent (all its workers).

    python bench/capacity.py --app echo --calls 50 100 200
    python bench/capacity.py --app receptionist --calls 25 50 100 --rounds 2
    python bench/capacity.py --app receptionist --calls 50 --profile   # + py-spy flame graph

One ``sipagent serve`` (``--workers K`` processes when asked; peer-to-peer on loopback) serves
the whole ladder, so memory growth across steps and ``--rounds`` shows. Each step starts N
SIPp callers (``tests/peers/sipp/uac_call.xml``, spread over the workers' SIP ports, ``--rate``
new calls per second) that stream audio at the agent; ``tcpdump -i lo`` records SIP and RTP,
and every pacing and latency number comes from that capture.

``echo``: the callers stream a tone; the agent sends every frame back.
``receptionist``: the callers stream the conversation benchmark's caller script (espeak-ng
utterances separated by silence, the same file for every caller); the agent talks to the
project's wire-protocol fakes of Deepgram, OpenAI and ElevenLabs (``tests/kit/fakes``, run in
this process through the real SDKs on the agent's side) at the reference design's latencies:
STT final 300 ms after speech end, LLM first token 300 ms, TTS first byte 100 ms. The fake
ElevenLabs' concurrency limit is raised to the number of calls (a plan with that many
concurrent requests) and so is the agent's own TTS bound.

Per step: calls answered and refused (final responses by code), INVITE-to-200 p99; agent CPU
(user + system of the agent and all its workers over the step's wall time, 100 % = one core);
RSS of all agent processes before, at the peak and 3 s after the calls ended, and the peak
growth per call; outgoing pacing (|inter-arrival - 20 ms| of the agent's packets, pooled over
calls in the window when all are up) p50/p99/max, the share of calls whose own p99 is over
5 ms, and frame slots never sent (RTP timestamp jumps). Receptionist only: *voice-to-voice*
(the caller's last voiced packet of an utterance -> the agent's first voiced packet after it,
both on the wire), *agent overhead* = voice-to-voice minus the fakes' nominal 700 ms, turns
left unanswered (no voiced agent packet before the caller's next utterance), the greeting's
start after the 200 OK, and how late the fakes themselves were (their own stamps: LLM first
chunk and TTS first chunk after the configured latency), which bounds how much of the
"overhead" is the fakes' (same machine, same two cores).

The benchmark shares the machine with the agent. Each step also reports the whole machine's
busy and *steal* shares (/proc/stat: time the hypervisor gave these virtual CPUs to another
guest; 2 % or more is listed as an anomaly, since such stalls hit the agent, the fakes and
tcpdump at once) and, with workers, the pacing of each worker's calls (the workers share
the cores but not an event loop: a paired comparison within one run, under the same noise).
``--everything-realtime N`` runs this process, and so SIPp, tcpdump and the agent it starts,
at SCHED_RR N: nobody favoured, each process runs until it blocks.

``--pair SIPAGENT_X=value`` is a paired comparison: two single-worker agents instead of one
agent (``serve --workers 1`` each, on consecutive SIP ports, the calls split evenly), the
second one (B) with that setting in its environment. Both run in the same steps under the same
noise; each one's pacing, CPU (its own process tree) and, for the receptionist, overhead are
reported side by side. A change to one agent's CPU also shows in the other's numbers through
the shared cores, so read its effect in B's own CPU and B's event loop, not in the totals.

Results: markdown on stdout, JSON in ``bench/results/capacity_<app>.json``; with ``--profile``
a py-spy flame graph of the agent during the largest step in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test kit, as tests.kit

from benchlib import (  # noqa: E402
    free_port,
    machine_info,
    run_benchmark,
    sipagent_command,
    wait_agent_bound,
)
from conversation_bench.fakes import (  # noqa: E402
    ENDPOINTING_MS,
    LLM_FIRST_TOKEN_S,
    NOMINAL_PROVIDER_S,
    STT_FINAL_S,
    TTS_FIRST_BYTE_S,
    TimedElevenLabs,
)
from conversation_bench.runner import cpu_busy_percent, foreign_activity  # noqa: E402
from conversation_bench.scenarios import V2V_REPLIES, CallerScript, v2v_script  # noqa: E402
from media_timing import (  # noqa: E402
    interval_stats,
    invite_stats,
    rtp_streams,
    sip_calls,
    tcpdump_drops,
    to_ulaw,
    tone,
)

from tests.kit.fakes.deepgram_server import FakeDeepgramServer  # noqa: E402
from tests.kit.fakes.openai_server import FakeOpenAIServer, Reply  # noqa: E402
from tests.kit.peerlib.audio import AudioLibrary  # noqa: E402
from tests.kit.peerlib.capture import Capture, parse_rtp, read_udp_datagrams  # noqa: E402
from tests.kit.peerlib.common import end_process, start_process  # noqa: E402
from tests.kit.peerlib.sipp import Sipp  # noqa: E402

LOOPBACK = "127.0.0.1"
FRAME_S = 0.020
FRAME_BYTES = 160
SILENCE = 0xFF
CAPTURE_LINGER_S = 0.5
SETTLE_S = 3.0  # after the last call: app grace and media close are over
RSS_SAMPLE_S = 0.5
PACING_LATE_MS = 5.0
TARGETS = {
    "echo_calls": 200,
    "receptionist_calls": 100,
    "pacing_p99_ms": 5.0,
    "overhead_p95_ms": 50.0,
    "mb_per_call": 5.0,
}
RESULTS = REPO / "bench" / "results"


# ---------------------------------------------------------------------------------------------
# the agent's processes


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (workers and whatever they start)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_rss_mb(pids: Sequence[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


# Time the hypervisor gave our virtual CPUs to someone else: the stalls it makes hit every
# process on the machine at once (agent, fakes, tcpdump), and no scheduling here avoids them.
STEAL_NOTED_PCT = 2.0


def proc_stat_cpu() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def cpu_shares(before: Sequence[int], after: Sequence[int]) -> dict[str, float]:
    """The whole machine's busy and steal shares (% of all CPUs' time) between two samples."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    busy = total - delta[3] - delta[4] - delta[7]
    return {"busy": round(100.0 * busy / total, 1), "steal": round(100.0 * delta[7] / total, 1)}


def late_streams(per_stream: Sequence[dict[str, Any]]) -> int:
    """How many streams' own pacing p99 is over PACING_LATE_MS."""
    return sum(1 for s in per_stream if (s["error_ms"]["p99"] or 0) > PACING_LATE_MS)


def sip_ports_of(base: int, workers: int) -> list[int]:
    """Worker i listens on base + i (`sipagent serve --workers`)."""
    return [base + i for i in range(workers)]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def split_port_range(ports: str, parts: int) -> list[str]:
    """ "first-last" in `parts` equal consecutive slices, as `serve --workers` slices it."""
    first, last = (int(x) for x in ports.split("-"))
    size = (last - first + 1) // parts
    return [f"{first + i * size}-{first + (i + 1) * size - 1}" for i in range(parts)]


def split_calls(calls: int, parts: int) -> list[int]:
    """N calls over K workers as evenly as possible (first ones get the remainder)."""
    return [calls // parts + (1 if i < calls % parts else 0) for i in range(parts)]


def pct(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": int(arr.size),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "max": round(float(arr.max()), 1),
    }


# ---------------------------------------------------------------------------------------------
# the receptionist's turns, from the capture


@dataclass
class CallTurns:
    v2v_ms: list[float]
    unanswered: int
    greeting_after_200_ms: float | None


@dataclass
class CallTurnsPooled:
    """Many calls' turns together."""

    v2v_ms: list[float] = field(default_factory=list)
    greeting_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    turns: int = 0

    @property
    def overhead_ms(self) -> list[float]:
        """Voice-to-voice minus the fakes' nominal latencies: what the agent added."""
        return [x - NOMINAL_PROVIDER_S * 1000 for x in self.v2v_ms]


def conversation_turns(
    datagrams: Sequence[Any], agent_rtp_port: int, answered_at: float, script: CallerScript
) -> CallTurns | None:
    """One call's turns: its caller packets (to the agent's port) by file frame, its agent
    packets (from that port) in order; an utterance's reply is the first voiced agent packet
    after its last voiced caller packet and before the next utterance starts."""
    caller: dict[int, float] = {}
    agent: list[tuple[float, bool]] = []
    ts0: int | None = None
    for d in datagrams:
        if agent_rtp_port not in (d.src[1], d.dst[1]):
            continue
        pkt = parse_rtp(d)
        if pkt is None or pkt.pt != 0:
            continue
        if d.dst[1] == agent_rtp_port:
            ts0 = pkt.ts if ts0 is None else ts0
            caller.setdefault(((pkt.ts - ts0) % 2**32) // FRAME_BYTES, d.time)
        else:
            agent.append((d.time, any(b != SILENCE for b in pkt.payload)))
    if not caller or not agent:
        return None
    times = np.asarray([t for t, _ in agent])
    voiced = [t for t, v in agent if v]
    greeting = next((t for t in voiced if t >= answered_at), None)
    v2v: list[float] = []
    unanswered = 0
    utterances = script.utterances
    for k, utt in enumerate(utterances):
        end = caller.get(utt.voiced_last)
        if end is None:
            continue
        nxt = caller.get(utterances[k + 1].voiced_first) if k + 1 < len(utterances) else None
        horizon = nxt if nxt is not None else times[-1] + 1.0
        i = int(np.searchsorted(times, end, side="right"))
        reply = next((t for t, v in agent[i:] if v), None)
        if reply is None or reply >= horizon:
            unanswered += 1
            continue
        v2v.append((reply - end) * 1000)
    return CallTurns(
        v2v, unanswered, None if greeting is None else round((greeting - answered_at) * 1000, 1)
    )


# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.anomalies: list[str] = []
        self.base_port = free_port()
        self.sip_ports = sip_ports_of(self.base_port, args.workers)
        # One agent (`serve --workers K`), or with --pair two single-worker agents A and B.
        self.agents: list[asyncio.subprocess.Process] = []
        self.agent_cmds: list[list[str]] = []
        self.agent_log = workdir / "agent.log"
        self._log_fh: Any = None
        self.script: CallerScript | None = None
        self.deepgram: FakeDeepgramServer | None = None
        self.openai: FakeOpenAIServer | None = None
        self.elevenlabs: TimedElevenLabs | None = None

    # -- fakes and agent ---------------------------------------------------------------------

    def provider_env(self) -> dict[str, str]:
        assert self.deepgram and self.openai and self.elevenlabs
        top = max(self.args.calls)
        return {
            "SIPAGENT_DEEPGRAM_API_KEY": self.deepgram.api_key,
            "SIPAGENT_DEEPGRAM_URL": self.deepgram.url,
            "SIPAGENT_OPENAI_API_KEY": self.openai.api_key,
            "SIPAGENT_OPENAI_BASE_URL": self.openai.base_url,
            "SIPAGENT_ELEVENLABS_API_KEY": self.elevenlabs.api_key,
            "SIPAGENT_ELEVENLABS_BASE_URL": self.elevenlabs.base_url,
            "SIPAGENT_ENDPOINTING_MS": str(ENDPOINTING_MS),
            "SIPAGENT_IDLE_REPROMPT_SECONDS": "120",
            "SIPAGENT_TTS_MAX_CONCURRENT": str(2 * top),
        }

    def agent_command(self, sip_ports: Sequence[int], rtp_ports: str) -> list[str]:
        args = self.args
        top = max(args.calls)
        cmd = [
            *sipagent_command(), "serve", "--app", args.app,
            "--bind", f"{LOOPBACK}:{sip_ports[0]}", "--rtp-ports", rtp_ports,
        ]  # fmt: skip
        if args.max_calls != 0:  # 0: the agent's own default, as a deployment runs it
            cmd += ["--max-calls", str(args.max_calls or 2 * top)]
        cmd += ["--workers", str(len(sip_ports))]
        if args.realtime_priority:
            cmd += ["--realtime-priority", str(args.realtime_priority)]
        if args.loop:
            cmd += ["--loop", args.loop]
        return cmd

    def agent_env(self) -> dict[str, str]:
        args = self.args
        top = max(args.calls)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIPAGENT_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_"))
        }
        # SIPp starts the calls from one address: the flood limits meant for strangers would
        # answer most of them 503.
        env["SIPAGENT_INVITES_PER_SECOND"] = str(max(20, 2 * args.rate))
        env["SIPAGENT_MAX_UNCONFIRMED_PER_SOURCE"] = str(max(8, top))
        env["SIPAGENT_DATABASE_URL"] = f"sqlite:///{self.workdir / 'bench.db'}"
        env["COLUMNS"] = "240"
        if args.app == "receptionist":
            env.update(self.provider_env())
        return env

    async def start_agent(self) -> None:
        # With --pair each agent gets one SIP port and half of the RTP range (as the workers
        # of one `serve` do: a port one agent just released is not the other's next call's);
        # otherwise one agent has all.
        groups = [[port] for port in self.sip_ports] if self.args.pair else [self.sip_ports]
        ranges = split_port_range(self.args.rtp_ports, len(groups))
        self._log_fh = self.agent_log.open("wb")
        try:
            for i, ports in enumerate(groups):
                env = self.agent_env()
                if self.args.pair:
                    # Each its own status server (both on the default port: B's failed to
                    # bind, and B ran without the status and metrics work that A did).
                    env["SIPAGENT_STATUS_BIND"] = f"{LOOPBACK}:{free_tcp_port()}"
                if i == 1:
                    env.update(self.args.pair)
                cmd = self.agent_command(
                    ports, ranges[i] if self.args.pair else self.args.rtp_ports
                )
                self.agent_cmds.append(cmd)
                agent = await start_process(
                    cmd, cwd=self.workdir, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env
                )
                self.agents.append(agent)
                await wait_agent_bound(agent, ports, self.agent_log, timeout=40.0)
            await asyncio.sleep(1.0)  # bound before its loop serves; imports settle
        except BaseException:
            await self.stop_agent()
            raise

    async def stop_agent(self) -> None:
        while self.agents:
            code = await end_process(self.agents.pop(), sig=signal.SIGTERM, grace=15.0)
            if code not in (0, None):
                self.anomalies.append(f"agent exited with code {code} on SIGTERM")
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def agent_pids(self) -> list[int]:
        return [pid for agent in self.agents for pid in process_tree(agent.pid)]

    def agent_cpu_seconds(self) -> list[float]:
        """Each agent's CPU time (its own process tree)."""
        return [tree_cpu_seconds(process_tree(agent.pid)) for agent in self.agents]

    def agent_command_line(self) -> str:
        lines = [shlex.join(cmd) for cmd in self.agent_cmds]
        if self.args.pair and len(lines) == 2:
            setting = " ".join(f"{k}={v}" for k, v in self.args.pair.items())
            lines[1] = f"{setting} {lines[1]}"
        return " ; ".join(lines)

    def log_problems(self, since: int) -> list[str]:
        with self.agent_log.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
        return [line.rstrip()[:300] for line in text.splitlines() if pattern.search(line)]

    # -- one step ----------------------------------------------------------------------------

    def caller_audio(self, run_dir: Path) -> tuple[Path, float]:
        if self.args.app == "echo":
            audio = run_dir / "caller.ulaw"
            audio.write_bytes(to_ulaw(tone(self.args.seconds, 300.0)))
            return audio, self.args.seconds
        assert self.script is not None
        return self.script.path, self.script.seconds

    async def step(self, calls: int, round_no: int, profile: bool) -> dict[str, Any]:
        args = self.args
        name = f"{args.app}-{calls}-r{round_no}"
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        if not self.agents or any(a.returncode is not None for a in self.agents):
            raise RuntimeError(f"agent not running; log: {self.agent_log}")
        audio, audio_s = self.caller_audio(run_dir)
        hold_ms = int(audio_s * 1000) + 300
        sipps = [
            Sipp(
                run_dir, "uac_call.xml", remote=f"{LOOPBACK}:{port}", service="agent",
                params={"AUDIO": audio, "HOLD_MS": hold_ms}, calls=n,
                timeout=hold_ms / 1000 + n / args.rate + 30.0,
                extra_args=["-l", str(n), "-r", str(args.rate), "-rp", "1000"],
                name=f"w{i}-{n}calls",
            )
            for i, (port, n) in enumerate(
                zip(self.sip_ports, split_calls(calls, args.workers), strict=True)
            )
            if n
        ]  # fmt: skip
        first, last = args.rtp_ports.split("-")
        ports = " or ".join(f"port {p}" for p in self.sip_ports)
        capture = Capture(
            run_dir / "capture.pcap",
            f"udp and ({ports} or portrange {first}-{last})",
            linger=CAPTURE_LINGER_S,
        )
        foreign = foreign_activity(str(self.workdir), {os.getppid(), *self.agent_pids()})
        busy = await cpu_busy_percent(1.0)
        if foreign:
            self.anomalies.append(f"{name}: machine not idle: {foreign[0]}")
        if busy is not None and busy > 15.0:
            self.anomalies.append(f"{name}: CPUs {busy:.0f}% busy in the second before")
        log_from = self.agent_log.stat().st_size
        pids = self.agent_pids()
        rss_before = tree_rss_mb(pids)
        cpu_before, wall_before = tree_cpu_seconds(pids), time.monotonic()
        each_cpu_before = self.agent_cpu_seconds()
        own_cpu_before = time.process_time()
        stat_before = proc_stat_cpu()
        rss_peak = rss_before
        stop_sampling = asyncio.Event()

        async def sample_rss() -> None:
            nonlocal rss_peak
            while not stop_sampling.is_set():
                # Scanning /proc takes ~10 ms: not on the loop that serves the fakes.
                rss = await asyncio.to_thread(lambda: tree_rss_mb(self.agent_pids()))
                rss_peak = max(rss_peak, rss)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), RSS_SAMPLE_S)

        profiler = await self.start_profiler(calls) if profile else None
        sampler = asyncio.create_task(sample_rss())
        results = []
        async with capture:
            try:
                await asyncio.gather(*(s.start(wait_bound=False) for s in sipps))
                results = await asyncio.gather(*(s.wait() for s in sipps))
            finally:
                for s in sipps:
                    await s.stop()
        wall = time.monotonic() - wall_before
        cpu_during = tree_cpu_seconds(self.agent_pids()) - cpu_before
        each_cpu = [b - a for a, b in zip(each_cpu_before, self.agent_cpu_seconds(), strict=True)]
        own_cpu = time.process_time() - own_cpu_before
        machine = cpu_shares(stat_before, proc_stat_cpu())
        flame = await self.stop_profiler(profiler)
        await asyncio.sleep(SETTLE_S)
        stop_sampling.set()
        await sampler
        rss_after = tree_rss_mb(self.agent_pids())

        datagrams = read_udp_datagrams(capture.path)
        invites: dict[str, Any] = {}
        calls_by_port: dict[int, dict[str, Any]] = {}  # each worker's SIP port -> its calls
        for port in self.sip_ports:
            calls_by_port[port] = sip_calls(datagrams, port)
            invites.update(calls_by_port[port])
        statuses: dict[str, int] = {}
        for c in invites.values():
            key = str(c.final_status) if c.final_status is not None else "none"
            statuses[key] = statuses.get(key, 0) + 1
        answered = [c for c in invites.values() if c.final_status == 200 and c.agent_rtp_port]
        streams = rtp_streams(datagrams, src_ports={c.agent_rtp_port for c in answered})
        pacing = interval_stats(streams, args.warmup)
        per_stream = pacing.pop("per_stream")
        late_calls = late_streams(per_stream)
        by_worker: list[dict[str, Any]] = []
        if args.workers > 1:  # workers share the cores but not the event loop: say each one's
            for i, (port, calls_at) in enumerate(calls_by_port.items()):
                theirs = [
                    c for c in calls_at.values() if c.final_status == 200 and c.agent_rtp_port
                ]
                mine = {c.agent_rtp_port for c in theirs}
                worker = interval_stats(rtp_streams(datagrams, src_ports=mine), args.warmup)
                entry: dict[str, Any] = {
                    "sip_port": port, "calls": len(mine), "error_ms": worker["error_ms"],
                    "calls_with_p99_over_5ms": late_streams(worker["per_stream"]),
                }  # fmt: skip
                if args.pair:  # each agent is one worker: its own CPU, its own turns
                    entry["agent"] = "AB"[i]
                    entry["cpu_pct"] = round(100.0 * each_cpu[i] / wall, 1) if wall > 0 else None
                    if args.app == "receptionist":
                        turns = self.call_turns(datagrams, theirs)
                        entry["overhead_ms"] = pct(turns.overhead_ms)
                by_worker.append(entry)
        row: dict[str, Any] = {
            "step": name,
            "app": args.app,
            "workers": args.workers,
            "calls": calls,
            "round": round_no,
            "statuses": statuses,
            "answered": len(answered),
            "refused": sum(n for s, n in statuses.items() if s not in ("200", "none")),
            "invite_to_200": invite_stats(invites),
            "agent_cpu_pct": round(100.0 * cpu_during / wall, 1) if wall > 0 else None,
            "bench_process_cpu_pct": round(100.0 * own_cpu / wall, 1) if wall > 0 else None,
            "machine_cpu_pct": machine,
            "rss_mb": {
                "before": round(rss_before, 1),
                "peak": round(rss_peak, 1),
                "after": round(rss_after, 1),
            },
            "rss_per_call_mb": round((rss_peak - rss_before) / max(1, len(answered)), 3),
            "pacing": {
                **pacing,
                "calls_with_p99_over_5ms": late_calls,
                "calls_with_p99_over_5ms_pct": round(100.0 * late_calls / len(per_stream), 1)
                if per_stream
                else None,
                "by_worker": by_worker,
            },
            "sipp": [
                {"command": shlex.join(s.args()), "returncode": r.returncode, "ok": r.ok}
                for s, r in zip(sipps, results, strict=False)
            ],
            "tcpdump_dropped": tcpdump_drops(capture),
            "machine_before": {"cpu_busy_pct": busy, "other_processes": foreign},
            "artifacts": str(run_dir),
        }
        if flame is not None:
            row["flame_graph"] = flame
        if args.app == "receptionist":
            row.update(self.conversation_stats(datagrams, answered))
        problems = self.log_problems(log_from)
        row["agent_log_problems"] = {"count": len(problems), "first": problems[:5]}
        if len(streams) != len(answered):
            self.anomalies.append(
                f"{name}: {len(answered)} calls answered, {len(streams)} agent RTP streams"
            )
        if machine["steal"] >= STEAL_NOTED_PCT:
            self.anomalies.append(
                f"{name}: the hypervisor took {machine['steal']:.1f} % of the CPUs' time (steal)"
            )
        if row["tcpdump_dropped"]:
            self.anomalies.append(f"{name}: tcpdump dropped {row['tcpdump_dropped']} packets")
        return row

    def call_turns(self, datagrams: Sequence[Any], answered: Sequence[Any]) -> CallTurnsPooled:
        """The turns of these calls, pooled."""
        assert self.script is not None
        pooled = CallTurnsPooled()
        for call in answered:
            got = conversation_turns(datagrams, call.agent_rtp_port, call.ok_at, self.script)
            if got is None:
                pooled.unanswered += len(self.script.utterances)
                continue
            pooled.v2v_ms.extend(got.v2v_ms)
            pooled.unanswered += got.unanswered
            pooled.turns += len(got.v2v_ms) + got.unanswered
            if got.greeting_after_200_ms is not None:
                pooled.greeting_ms.append(got.greeting_after_200_ms)
        return pooled

    def conversation_stats(self, datagrams: Sequence[Any], answered: list[Any]) -> dict[str, Any]:
        assert self.script is not None and self.openai and self.elevenlabs
        pooled = self.call_turns(datagrams, answered)
        llm_late = [
            (r.first_chunk_at - r.received_at - LLM_FIRST_TOKEN_S) * 1000
            for r in self.openai.requests[self._llm_seen :]
            if r.first_chunk_at is not None and r.received_at is not None
        ]
        tts_late = []
        for r in self.elevenlabs.requests[self._tts_seen :]:
            sent = getattr(r.first_chunk_sent, "at", None)
            received = self.elevenlabs.received_at.get(id(r))
            if sent is not None and received is not None:
                tts_late.append((sent - received - TTS_FIRST_BYTE_S) * 1000)
        stt_late = []  # the fake's speech_final Results: written how long after they were due
        assert self.deepgram is not None
        for conn in self.deepgram.connections[self._stt_seen :]:
            stt_late.extend(
                late * 1000
                for message, late in zip(conn.sent, conn.sent_late, strict=False)
                if message.get("type") == "Results" and message.get("speech_final")
            )
        self._llm_seen = len(self.openai.requests)
        self._tts_seen = len(self.elevenlabs.requests)
        self._stt_seen = len(self.deepgram.connections)
        return {
            "turns": pooled.turns,
            "turns_unanswered": pooled.unanswered,
            "v2v_ms": pct(pooled.v2v_ms),
            "overhead_ms": pct(pooled.overhead_ms),
            "greeting_after_200_ms": pct(pooled.greeting_ms),
            "fakes_late_ms": {
                "stt_final": pct(stt_late),
                "llm_first_chunk": pct(llm_late),
                "tts_first_chunk": pct(tts_late),
            },
        }

    # -- profiling ---------------------------------------------------------------------------

    async def start_profiler(self, calls: int) -> tuple[Any, Path] | None:
        spy = shutil.which("py-spy")
        if spy is None:
            self.anomalies.append("--profile: py-spy is not installed (pip install py-spy)")
            return None
        out = RESULTS / f"capacity_{self.args.app}_{calls}calls_profile.svg"
        # The worker processes when there are some (the supervisor only supervises).
        cmd = [spy, "record", "--pid", str(self.agents[0].pid), "--output", str(out), "--rate",
               "100", "--nonblocking", "--subprocesses"]  # fmt: skip
        proc = await start_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return proc, out

    async def stop_profiler(self, profiler: tuple[Any, Path] | None) -> str | None:
        if profiler is None:
            return None
        proc, out = profiler
        await end_process(proc, sig=signal.SIGINT, grace=30.0)
        return str(out.relative_to(REPO)) if out.exists() else None

    # -- the ladder --------------------------------------------------------------------------

    async def run(self) -> list[dict[str, Any]]:
        args = self.args
        rows: list[dict[str, Any]] = []
        self._llm_seen = self._tts_seen = self._stt_seen = 0
        async with contextlib.AsyncExitStack() as stack:
            if args.app == "receptionist":
                lib = AudioLibrary(self.workdir / "audio")
                self.script = v2v_script(lib, self.workdir / "caller.ulaw", args.turns, args.gap)
                top = max(args.calls)
                rounds = len(args.calls) * args.rounds
                transcripts = [
                    u.text + "." for _ in range(top * rounds + 10) for u in self.script.utterances
                ]

                def llm(body: dict[str, Any]) -> Reply:
                    users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
                    return Reply(V2V_REPLIES[(users - 1) % len(V2V_REPLIES)])

                self.deepgram = await stack.enter_async_context(
                    FakeDeepgramServer(transcripts, final_latency=STT_FINAL_S)
                )
                self.openai = await stack.enter_async_context(
                    FakeOpenAIServer(llm, first_token_latency=LLM_FIRST_TOKEN_S)
                )
                self.elevenlabs = await stack.enter_async_context(
                    TimedElevenLabs(
                        first_byte_latency=TTS_FIRST_BYTE_S, speed=None,
                        concurrency_limit=2 * top,
                    )
                )  # fmt: skip
            await self.start_agent()
            stack.push_async_callback(self.stop_agent)
            # The fakes share this process: keep its full collections as short as the agent's.
            gc.collect()
            gc.freeze()
            biggest = max(args.calls)
            for round_no in range(1, args.rounds + 1):
                for calls in args.calls:
                    label = f"{args.app}-{calls}-r{round_no}"
                    profile = args.profile and calls == biggest and round_no == 1
                    try:
                        rows.append(await self.step(calls, round_no, profile))
                    except (asyncio.CancelledError, KeyboardInterrupt):
                        raise
                    except Exception as error:
                        self.anomalies.append(f"{label}: {type(error).__name__}: {error}")
                        traceback.print_exc()
                        rows.append({"step": label, "error": f"{type(error).__name__}: {error}"})
                    print(f"  done: {label}", file=sys.stderr, flush=True)
                    await asyncio.sleep(args.pause)
        return rows


# ---------------------------------------------------------------------------------------------
# report


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    out = [
        f"## Capacity: {s['app']}, {s['workers']} worker(s), loop {s['loop'] or 'asyncio'}"
        + (f", everything at SCHED_RR {rt}" if (rt := s.get("everything_realtime")) else ""),
        "",
        f"`{report['command']}`",
        "",
    ]
    receptionist = s["app"] == "receptionist"
    head = ["calls", "round", "answered / refused", "agent CPU %", "machine busy / steal %",
            "RSS MB before/peak/after",
            "MB per call", "pacing p50 / p99 / max ms", "calls p99 > 5 ms", "frames never sent",
            "INVITE-200 p99 ms"]  # fmt: skip
    if receptionist:
        head += ["v2v p50 / p95 ms", "overhead p50 / p95 ms", "unanswered turns",
                 "greeting after 200 p50 / p95 ms",
                 "fakes late p95 ms (STT / LLM / TTS)"]  # fmt: skip
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        if "error" in r:
            out.append(f"| {r['step']} | error: {r['error']} |")
            continue
        p, rss = r["pacing"], r["rss_mb"]
        err = p["error_ms"]
        cells = [
            str(r["calls"]), str(r["round"]), f"{r['answered']} / {r['refused']}",
            _f(r["agent_cpu_pct"]),
            f"{_f(m['busy'])} / {_f(m['steal'])}" if (m := r.get("machine_cpu_pct")) else "-",
            f"{rss['before']:.0f} / {rss['peak']:.0f} / {rss['after']:.0f}",
            _f(r["rss_per_call_mb"], 2),
            f"{_f(err['p50'], 2)} / {_f(err['p99'], 2)} / {_f(err['max'], 1)}",
            f"{p['calls_with_p99_over_5ms']} ({_f(p['calls_with_p99_over_5ms_pct'])} %)",
            f"{p['skipped_slots']} ({_f(p['skipped_slots_pct'], 3)} %)",
            _f(r["invite_to_200"]["ms"]["p99"]),
        ]  # fmt: skip
        if receptionist:
            v, o, g = r["v2v_ms"], r["overhead_ms"], r["greeting_after_200_ms"]
            fl = r["fakes_late_ms"]
            cells += [
                f"{_f(v['p50'])} / {_f(v['p95'])}", f"{_f(o['p50'])} / {_f(o['p95'])}",
                f"{r['turns_unanswered']} of {r['turns']}", f"{_f(g['p50'])} / {_f(g['p95'])}",
                " / ".join(_f(fl[k]["p95"]) if k in fl else "-"
                           for k in ("stt_final", "llm_first_chunk", "tts_first_chunk")),
            ]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    workers = [
        f"- {r['step']}: " + "; ".join(
            (f"agent {w['agent']} (CPU {_f(w['cpu_pct'])} %) " if "agent" in w else "")
            + f"SIP port {w['sip_port']}: {w['calls']} calls, pacing p99"
            f" {_f(w['error_ms']['p99'], 2)} ms, {w['calls_with_p99_over_5ms']} calls p99 > 5 ms"
            + (f", overhead p50 / p95 {_f(o['p50'])} / {_f(o['p95'])} ms"
               if (o := w.get("overhead_ms")) else "")
            for w in by_worker
        )
        for r in report["results"]
        if (by_worker := r.get("pacing", {}).get("by_worker"))
    ]  # fmt: skip
    if workers:
        title = (
            "By agent (B: " + " ".join(f"{k}={v}" for k, v in s["pair"].items()) + "):"
            if s.get("pair")
            else "Pacing by worker:"
        )
        out += ["", title, *workers]
    if report["anomalies"]:
        out += ["", "Anomalies:", *(f"- {a}" for a in report["anomalies"][:30])]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--app", choices=("echo", "receptionist"), default="receptionist")
    p.add_argument("--calls", type=int, nargs="+", default=[25, 50, 100], help="the ladder")
    p.add_argument("--rounds", type=int, default=1, help="repeat the ladder (memory growth)")
    p.add_argument("--workers", type=int, default=1, help="sipagent serve --workers")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), help="sipagent serve --loop")
    p.add_argument(
        "--realtime-priority", type=int, default=0,
        help="sipagent serve --realtime-priority (SCHED_RR; the fakes and SIPp stay normal)",
    )  # fmt: skip
    p.add_argument(
        "--everything-realtime", type=int, default=0, metavar="N",
        help="this benchmark (the fakes), SIPp, tcpdump and the agent all at SCHED_RR N: "
        "every process runs until it blocks, none favoured (needs root)",
    )  # fmt: skip
    p.add_argument(
        "--max-calls", type=int,
        help="the agent's --max-calls (default 2 x top; 0: the agent's own default)",
    )  # fmt: skip
    p.add_argument("--rate", type=int, default=10, help="new calls per second (SIPp -r)")
    p.add_argument("--seconds", type=float, default=20.0, help="echo: call length, s")
    p.add_argument("--turns", type=int, default=4, help="receptionist: utterances per call")
    p.add_argument("--gap", type=float, default=2.4, help="receptionist: silence after each, s")
    p.add_argument("--warmup", type=float, default=0.5, help="dropped from each stream, s")
    p.add_argument("--pause", type=float, default=2.0, help="between steps, s")
    p.add_argument("--rtp-ports", default="24000-25999", help="the agent's RTP port range")
    p.add_argument("--profile", action="store_true", help="py-spy flame graph of the top step")
    p.add_argument("--out", type=Path, help="JSON (default bench/results/capacity_<app>.json)")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    p.add_argument(
        "--pair", action="append", default=[], metavar="SIPAGENT_X=VALUE",
        help="paired comparison: two single-worker agents, the second with this setting",
    )  # fmt: skip
    p.add_argument("--time-limit", type=float, default=1500.0, help="abort after this, s")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / f"capacity_{args.app}.json"
    if min(args.calls) < 1 or args.workers < 1 or args.rounds < 1:
        p.error("calls, workers and rounds must be >= 1")
    pair: dict[str, str] = {}
    for item in args.pair:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("SIPAGENT_"):
            p.error(f"--pair {item!r}: expected SIPAGENT_NAME=value")
        pair[name] = value
    args.pair = pair
    if pair:
        if args.workers not in (1, 2):
            p.error("--pair runs two single-worker agents: leave --workers out")
        if args.profile:
            p.error("--profile profiles one agent: not with --pair")
        args.workers = 2  # two SIP ports, the calls split over them as over two workers
        try:
            first, last = (int(x) for x in args.rtp_ports.split("-"))
        except ValueError:
            p.error(f"--rtp-ports {args.rtp_ports!r}: expected FIRST-LAST")
        if last - first + 1 < 2 * 2 * max(args.calls):  # an even port per call, per agent
            p.error(f"--rtp-ports {args.rtp_ports}: too small to halve for --pair")
    if args.everything_realtime and args.realtime_priority:
        p.error("--everything-realtime already puts the agent at that priority")
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, main_task.cancel)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "capacity",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": TARGETS,
    }
    bench = Bench(args, workdir)
    try:
        report["results"] = await asyncio.wait_for(bench.run(), args.time_limit)
    finally:
        report["agent_command"] = bench.agent_command_line()
        report["anomalies"] = bench.anomalies
        report["machine"]["loadavg_end"] = list(os.getloadavg())
        report["duration_s"] = round(time.time() - started, 1)
    return report


def run_everything_realtime(priority: int) -> None:
    """This process at SCHED_RR `priority`: every process it starts (the agent and its
    workers, SIPp, tcpdump) inherits it, and the fakes run in it.

    Why: the load generator shares the agent's two cores. Under the normal scheduler the
    agent's 20 ms wake-ups queue behind the fakes' and SIPp's time slices; with only the agent
    at realtime priority the fakes starve (and their lateness shows up as the agent's
    overhead). At one realtime priority for all, each process runs until it blocks, in wake-up
    order, and nobody is favoured: the closest this machine gets to an agent with cores of
    its own."""
    from sipagent.agent import apply_realtime_priority

    if not apply_realtime_priority(priority):  # it logs why
        raise SystemExit(f"--everything-realtime {priority}: refused (needs root)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.everything_realtime:
        run_everything_realtime(args.everything_realtime)
    return run_benchmark(args, amain, markdown, workdir_prefix="sipagent-capacity-")


if __name__ == "__main__":
    sys.exit(main())
