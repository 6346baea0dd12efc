"""Running the scenarios: the agent process, the fakes, one SIPp call per caller script with
tcpdump on loopback, and the machine checks before each call."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import cpu_times, free_port, sipagent_command, wait_agent_bound

import tests.kit.fakes.deepgram_server as dg_fake
from tests.kit.fakes.openai_server import Reply
from tests.kit.peerlib.audio import AudioLibrary
from tests.kit.peerlib.capture import Capture
from tests.kit.peerlib.common import end_process, start_process
from tests.kit.peerlib.sipp import Sipp

from .fakes import (
    ENDPOINTING_MS,
    LLM_FIRST_TOKEN_S,
    STT_FINAL_S,
    TTS_FIRST_BYTE_S,
    TimedDeepgram,
    TimedElevenLabs,
    TimedOpenAI,
    TimedRecogniser,
)
from .scenarios import (
    LONG_REPLIES,
    V2V_REPLIES,
    CallerScript,
    ScenarioRun,
    barge_script,
    v2v_script,
)
from .stats import ScenarioAnalysis

LOOPBACK = "127.0.0.1"
CAPTURE_LINGER_S = 0.5  # --immediate-mode: packets are written as they arrive
IDLE_CPU_BUSY_PCT = 15.0
# Every Deepgram connection the fake accepts gets the timed recogniser (looked up per
# connection); done here, where the scenarios run, so importing the analysis changes nothing.
dg_fake.Recogniser = TimedRecogniser  # type: ignore[misc]

# The script whose `--agent-worker` mode runs the recording agent.
SCRIPT = Path(__file__).resolve().parent.parent / "conversation_latency.py"


# ---------------------------------------------------------------------------------------------
# machine hygiene (as bench/media_timing.py)


async def cpu_busy_percent(seconds: float = 1.0) -> float | None:
    try:
        total0, idle0 = cpu_times()
        await asyncio.sleep(seconds)
        total1, idle1 = cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (total - (idle1 - idle0)) / total, 1) if total > 0 else None


def foreign_activity(exclude: str, own_pids: set[int]) -> list[str]:
    """Other peer/test processes running now (not ours): they make the machine non-idle."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in {os.getpid(), *own_pids}:
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in args if a)
        names = {Path(a.decode(errors="replace")).name for a in args[:3] if a}
        if exclude in text:
            continue
        if names & {"sipp", "tcpdump", "baresip", "kamailio", "sipagent", "pytest"} or (
            ("pytest" in text or "sipagent" in text or "bench/" in text) and "python" in text
        ):
            found.append(text[:160])
    return sorted(found)


def clock_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few back-to-back reads."""
    best: tuple[float, float] | None = None
    for _ in range(50):
        m0 = time.monotonic()
        r = time.time()
        m1 = time.monotonic()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) / 2)
    assert best is not None
    return best[1]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.anomalies: list[str] = []
        self.agent_cmds: list[str] = []
        self.lib = AudioLibrary(workdir / "audio")
        self.own_pids: set[int] = set()  # the agent processes this run started
        self.analysis = ScenarioAnalysis(self.anomalies)

    # -- machine ---------------------------------------------------------------------------

    async def note_machine(self, name: str) -> dict[str, Any]:
        foreign = foreign_activity(str(self.workdir), self.own_pids)
        busy = await cpu_busy_percent(1.0)
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

    # -- agent -----------------------------------------------------------------------------

    async def start_agent(
        self, run: ScenarioRun, run_dir: Path
    ) -> tuple[asyncio.subprocess.Process, int, Any, Path]:
        port = free_port()
        serve_args = ["--app", "receptionist", "--bind", f"{LOOPBACK}:{port}",
                      "--rtp-ports", self.args.rtp_ports]  # fmt: skip
        dump = run_dir / "agent_sessions.json"
        if self.args.agent == "recording":
            cmd = [sys.executable, str(SCRIPT), "--agent-worker", str(dump)]
        else:
            cmd = [*sipagent_command(), "serve"]
        cmd += serve_args
        self.agent_cmds.append(shlex.join(cmd))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIPAGENT_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_"))
        }
        env.update({
            "COLUMNS": "240",
            "SIPAGENT_WORKERS": "1",  # the recording agent runs in-process: never a supervisor
            "SIPAGENT_DEEPGRAM_API_KEY": run.deepgram.api_key,
            "SIPAGENT_DEEPGRAM_URL": run.deepgram.url,
            "SIPAGENT_OPENAI_API_KEY": run.openai.api_key,
            "SIPAGENT_OPENAI_BASE_URL": run.openai.base_url,
            "SIPAGENT_ELEVENLABS_API_KEY": run.elevenlabs.api_key,
            "SIPAGENT_ELEVENLABS_BASE_URL": run.elevenlabs.base_url,
            "SIPAGENT_ENDPOINTING_MS": str(ENDPOINTING_MS),
            "SIPAGENT_BARGE_IN_SENSITIVITY": self.args.barge_in_sensitivity,
            "SIPAGENT_IDLE_REPROMPT_SECONDS": "120",
        })  # fmt: skip
        log_path = run_dir / "agent.log"
        log_fh = log_path.open("wb")
        proc = await start_process(
            cmd, cwd=run_dir, stdout=log_fh, stderr=subprocess.STDOUT, env=env
        )
        self.own_pids.add(proc.pid)
        try:
            await wait_agent_bound(proc, [port], log_path)
            await asyncio.sleep(0.5)  # bound before its loop serves; let imports settle
        except BaseException:
            await end_process(proc)
            log_fh.close()
            raise
        return proc, port, log_fh, log_path

    async def stop_agent(self, proc: asyncio.subprocess.Process, log_fh: Any, name: str) -> None:
        code = await end_process(proc, sig=signal.SIGTERM, grace=8.0)
        log_fh.close()
        if code not in (0, None):
            self.anomalies.append(f"{name}: agent exited with code {code} on SIGTERM")

    def log_problems(self, log_path: Path, name: str) -> list[str]:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
        problems = [line.rstrip() for line in text.splitlines() if pattern.search(line)]
        if problems:
            self.anomalies.append(
                f"{name}: {len(problems)} WARNING/ERROR line(s) in the agent log, first: "
                f"{problems[0][:200]}"
            )
        return problems

    # -- one scenario ----------------------------------------------------------------------

    async def run_scenario(
        self, name: str, scripts: list[CallerScript], transcripts: list[str], llm: Callable
    ) -> ScenarioRun:
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        TimedRecogniser.log.clear()
        TimedRecogniser.arrivals.clear()
        async with (
            TimedDeepgram(transcripts, final_latency=STT_FINAL_S) as deepgram,
            TimedOpenAI(llm, first_token_latency=LLM_FIRST_TOKEN_S) as openai,
            TimedElevenLabs(first_byte_latency=TTS_FIRST_BYTE_S, speed=None) as elevenlabs,
        ):
            run = ScenarioRun(name, deepgram, openai, elevenlabs)
            proc, port, log_fh, log_path = await self.start_agent(run, run_dir)
            try:
                run.offsets.append(clock_offset())
                for index, script in enumerate(scripts):
                    machine = await self.note_machine(f"{name} call {index + 1}")
                    if proc.returncode is not None:
                        raise RuntimeError(f"agent died; see {log_path}")
                    run.calls.append(await self.one_call(run_dir, index, port, script, machine))
                run.offsets.append(clock_offset())
            finally:
                await self.stop_agent(proc, log_fh, name)
            problems = self.log_problems(log_path, name)
            dump = run_dir / "agent_sessions.json"
            if self.args.agent == "recording":
                if dump.exists():
                    run.agent_dump = json.loads(dump.read_text())
                else:
                    self.anomalies.append(f"{name}: the agent wrote no session dump")
            run.agent_dump["log_problems"] = problems
            run.agent_dump["log"] = str(log_path)
        return run

    async def one_call(
        self, run_dir: Path, index: int, agent_port: int, script: CallerScript, machine: Any
    ) -> dict[str, Any]:
        call_dir = run_dir / f"call{index + 1}"
        call_dir.mkdir(parents=True, exist_ok=True)
        hold_ms = int(script.seconds * 1000) + 300
        sipp = Sipp(
            call_dir,
            "uac_call.xml",
            remote=f"{LOOPBACK}:{agent_port}",
            service="agent",
            params={"AUDIO": script.path, "HOLD_MS": hold_ms},
            timeout=hold_ms / 1000 + 15.0,  # SIPp's global -timeout must outlast the call
        )
        capture = Capture(
            call_dir / "capture.pcap",
            f"udp and (port {sipp.media_port} or port {agent_port})",
            linger=CAPTURE_LINGER_S,
        )
        async with capture:
            try:
                await sipp.start(wait_bound=False)
                result = await sipp.wait()
            finally:
                await sipp.stop()
        drops = re.search(r"(\d+) packets? dropped by kernel", capture.stderr)
        info = {
            "call": index + 1,
            "sipp_command": shlex.join(sipp.args()),
            "sipp_returncode": result.returncode,
            "caller_audio": str(script.path),
            "caller_audio_s": round(script.seconds, 2),
            "pcap": str(capture.path),
            "tcpdump_dropped": int(drops.group(1)) if drops else None,
            "machine_before": machine,
            "script": script,
            "media_port": sipp.media_port,
        }
        if not result.ok:
            self.anomalies.append(
                f"call {call_dir.name}: SIPp failed (rc={result.returncode}, "
                f"timed_out={result.timed_out}); see {sipp.workdir}"
            )
        if info["tcpdump_dropped"]:
            self.anomalies.append(f"{call_dir}: tcpdump dropped {info['tcpdump_dropped']} packets")
        return info

    # -- v2v -------------------------------------------------------------------------------

    async def scenario_v2v(self) -> dict[str, Any]:
        args = self.args
        scripts = [
            v2v_script(self.lib, self.workdir / f"v2v-caller{i + 1}.ulaw", args.turns, args.gap)
            for i in range(args.calls)
        ]
        transcripts = [u.text + "." for s in scripts for u in s.utterances]

        def llm(body: dict[str, Any]) -> Reply:
            users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
            return Reply(V2V_REPLIES[(users - 1) % len(V2V_REPLIES)])

        run = await self.run_scenario("v2v", scripts, transcripts, llm)
        return self.analysis.analyse_v2v(run)

    # -- barge-in --------------------------------------------------------------------------

    async def scenario_barge_in(self) -> dict[str, Any]:
        args = self.args
        scripts = [
            barge_script(self.lib, self.workdir / f"barge-caller{i + 1}.ulaw", args.barge_ins, 0.75)
            for i in range(args.barge_calls)
        ]
        transcripts = [u.text + "." for s in scripts for u in s.utterances]

        def llm(body: dict[str, Any]) -> Reply:
            users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
            return Reply(LONG_REPLIES[(users - 1) % len(LONG_REPLIES)])

        run = await self.run_scenario("barge-in", scripts, transcripts, llm)
        return self.analysis.analyse_barge_in(run)

    async def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name, coro_fn in (("v2v", self.scenario_v2v), ("barge-in", self.scenario_barge_in)):
            if name not in self.args.only:
                continue
            try:
                results[name] = await coro_fn()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as error:
                self.anomalies.append(f"{name}: {type(error).__name__}: {error}")
                traceback.print_exc()
                results[name] = {"scenario": name, "error": f"{type(error).__name__}: {error}"}
            print(f"  done: {name}", file=sys.stderr, flush=True)
        return results
