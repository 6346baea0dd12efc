"""What the benchmarks share: the machine they ran on, CPU sampling, ports, the agent binary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


async def wait_agent_bound(
    process: asyncio.subprocess.Process, ports: Sequence[int], log: Path, timeout: float = 30.0
) -> None:
    """Wait until the agent process has bound every SIP port in `ports`; raise (with the tail
    of its log) if it exits first or takes longer than `timeout` seconds."""
    from tests.kit.peerlib.common import wait_udp_bound  # the scripts put the repo on sys.path

    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"agent exited with {process.returncode}:\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(TimeoutError):
                await wait_udp_bound(port, timeout=0.2)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent did not bind SIP port {port} within {timeout:.0f} s")


def cpu_times() -> tuple[int, int]:
    """(total, idle + iowait) jiffies from /proc/stat, for a busy-share sample."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def sipagent_command() -> list[str]:
    script = Path(sys.executable).parent / "sipagent"
    if script.exists():
        return [str(script)]
    found = shutil.which("sipagent")
    if found:
        return [found]
    return [sys.executable, "-c", "from sipagent.cli.main import app; app()"]


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    sipp = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=5)
        sipp = next(
            (ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "SIPp" in ln), ""
        )
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sipp": sipp,
        "loadavg_start": list(os.getloadavg()),
    }


def run_benchmark(
    args: Any,
    amain: Callable[[Any, Path], Coroutine[Any, Any, dict[str, Any]]],
    markdown: Callable[[dict[str, Any]], str],
    *,
    workdir_prefix: str,
    json_default: Callable[[Any], Any] | None = None,
) -> int:
    """Run `amain(args, workdir)`, write its report as JSON to `args.out`, print it as markdown.

    Artifacts stay in the work directory when asked (`--keep`, `--workdir`), when the run was
    interrupted or failed, or when the report lists anomalies; otherwise it is removed.
    """
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    print(f"artifacts: {workdir}", file=sys.stderr, flush=True)
    try:
        report = asyncio.run(amain(args, workdir))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(f"benchmark interrupted; artifacts kept in {workdir}", file=sys.stderr)
        return 130
    except BaseException:
        print(f"benchmark aborted; artifacts kept in {workdir}", file=sys.stderr)
        raise
    report["artifacts"] = str(workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    print(markdown(report))
    print(f"\nJSON: {args.out}", file=sys.stderr)
    if args.keep or args.workdir or report["anomalies"]:
        print(f"artifacts kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
