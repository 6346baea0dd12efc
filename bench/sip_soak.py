#!/usr/bin/env python3
"""SIP soak: the issue-9 corpus and fresh mutations against a serving agent with live calls.

    python bench/sip_soak.py                          # 60 s at 300 msgs/s, 2 live calls
    python bench/sip_soak.py --seconds 600 --rate 500 --calls 5 --seed 7

A real agent process (``sipagent serve --app echo``, peer-to-peer, loopback) holds ``--calls``
SIPp callers (``tests/peers/sipp/uac_call.xml``) streaming numbered RTP frames for the whole
run, while one UDP socket sends the 1,194-message corpus (tests/kit/sip_corpus.py: RFC 4475 +
legal-unusual + seeded fuzz), then fresh mutations (tests/kit/hostile_input.py), at ``--rate``
messages/s for ``--seconds``. Every ``--probe-every`` messages an OPTIONS from a fresh socket
checks that SIP is still answered. The sender ACKs every final answer to an INVITE and BYEs
every call a mutation set up (tests/kit/peerlib/sip_blaster.py).

Reported: messages/s sent and answered, probes unanswered and the message after which SIP died
(a transport death), tracebacks in the agent's log, the agent's RSS before and after, and per
live call whether its echo stayed intact (every frame it sent came back, in order, to the end:
from a ``tcpdump -i lo`` capture of the callers' media ports) and its BYE was answered.

Results: a markdown table on stdout and JSON in ``bench/results/sip_soak.json``. Artifacts
(agent log, pcap, SIPp logs) go to a temporary directory, kept with ``--keep`` or when
something looked wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test kit, as tests.kit

from benchlib import free_port, machine_info, run_benchmark, sipagent_command  # noqa: E402

from tests.kit.hostile_input import SipCase, fuzzed_sip_message  # noqa: E402
from tests.kit.peerlib.capture import Capture, udp_ports_filter  # noqa: E402
from tests.kit.peerlib.common import end_process, start_process, wait_udp_bound  # noqa: E402
from tests.kit.peerlib.sip_blaster import (  # noqa: E402
    BlastReport,
    CorpusSender,
    echo_check,
    numbered_frames,
    probe_options,
    tracebacks,
)
from tests.kit.peerlib.sipp import Sipp  # noqa: E402
from tests.kit.sip_corpus import addressed, full_corpus  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "sip_soak.json"


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def agent_revision() -> str | None:
    """The git commit of the sipagent package this Python imports (the agent's code)."""
    spec = importlib.util.find_spec("sipagent")
    if spec is None or spec.origin is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(Path(spec.origin).parent), "rev-parse", "--short",
                              "HEAD"], capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, main_task.cancel)
    started = time.time()
    anomalies: list[str] = []
    port = free_port()
    agent = ("127.0.0.1", port)
    agent_cmd = [*sipagent_command(), "serve", "--app", "echo", "--bind", f"127.0.0.1:{port}",
                 "--rtp-ports", args.rtp_ports, "--status-bind", "", "--workers", "1"]  # fmt: skip
    log_path = workdir / "agent.log"
    with log_path.open("wb") as log:
        process = await start_process(agent_cmd, cwd=workdir, stdout=log, stderr=log)
    report: dict[str, Any] = {
        "benchmark": "sip_soak",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "rate": args.rate,
            "calls": args.calls,
            "seed": args.seed,
            "probe_every": args.probe_every,
        },
        "agent_command": shlex.join(agent_cmd),
        "agent_revision": agent_revision(),
    }
    blast = BlastReport()
    callers: list[Sipp] = []
    sent_messages = answered = 0
    try:
        await wait_udp_bound(port, timeout=15)
        rss_before = rss_kib(process.pid)
        call_seconds = args.seconds + 15
        for call in range(args.calls):
            audio = workdir / f"caller{call}.ulaw"
            audio.write_bytes(numbered_frames(call_seconds * 50 + 100, call))
            params = {"AUDIO": audio, "HOLD_MS": (args.seconds + 5) * 1000}
            remote = f"127.0.0.1:{port}"
            callers.append(Sipp(workdir, "uac_call.xml", remote=remote, service="agent",
                                timeout=call_seconds + 30, params=params))  # fmt: skip
        media_ports = [c.media_port for c in callers]
        capture = Capture(workdir / "media.pcap", udp_ports_filter(*media_ports))
        await capture.start()
        try:
            for caller in callers:
                await caller.start(wait_bound=False)
            await asyncio.sleep(1.5)
            cases = full_corpus(args.seed)
            deadline = loop.time() + args.seconds
            async with CorpusSender(agent) as sender:
                wire = [addressed(case, agent, sender.address) for case in cases]
                index = len(wire)
                offset = 0
                chunk = wire
                while loop.time() < deadline:
                    chunk = chunk[: max(1, int((deadline - loop.time()) * args.rate))]
                    await sender.blast(chunk, rate=args.rate, probe_every=args.probe_every,
                                       settle=0.0, offset=offset, report=blast)  # fmt: skip
                    offset += len(chunk)
                    fresh = []
                    for _ in range(args.rate * 5):
                        label, data = fuzzed_sip_message(args.seed + 1, index)
                        case = SipCase(f"fuzz/{args.seed + 1}/{index}/{label}", data, None, "fuzz",
                                       label.startswith(("host/", "multi/")))  # fmt: skip
                        fresh.append(addressed(case, agent, sender.address))
                        index += 1
                    chunk = fresh
                await asyncio.sleep(2.0)
                sent_messages = blast.sent
                answered = sum(1 for k, v in sender.answers.items() if v and k[:7] != "branch:")
                completed = sender.invites_completed
            results = [await caller.wait() for caller in callers]
        finally:
            await capture.stop()
        alive = await probe_options(agent)
        rss_after = rss_kib(process.pid)
    finally:
        for caller in callers:
            await caller.stop()
        code = await end_process(process, sig=signal.SIGTERM, grace=15.0)
    log_text = log_path.read_text(errors="replace")
    datagrams = capture.datagrams()
    calls = []
    for caller, result in zip(callers, results, strict=True):
        check = echo_check(datagrams, caller.media_port)
        check["bye_answered"] = result.ok
        calls.append(check)
    dead_after = blast.transport_dead_after
    elapsed = blast.seconds or 1.0
    report["results"] = {
        "messages_sent": sent_messages,
        "messages_per_s": round(sent_messages / elapsed, 1),
        "call_ids_answered": answered,
        "answered_per_s": round(answered / elapsed, 1),
        "invites_set_up_and_ended": completed,
        "probes": len(blast.probes),
        "probes_unanswered": sum(1 for _, ok in blast.probes if not ok),
        "transport_deaths": int(dead_after is not None or not alive),
        "transport_dead_after_message": dead_after,
        "tracebacks": tracebacks(log_text),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "live_calls": calls,
        "agent_exit_code": code,
    }
    if dead_after is not None or not alive:
        anomalies.append(f"SIP transport died (first unanswered probe after message {dead_after})")
    if report["results"]["tracebacks"]:
        anomalies.append(f"{len(report['results']['tracebacks'])} tracebacks in the agent log")
    for number, call in enumerate(calls):
        if not call["intact"] or not call["bye_answered"]:
            anomalies.append(f"live call {number}: echo intact={call['intact']}, "
                             f"BYE answered={call['bye_answered']}")  # fmt: skip
    report["anomalies"] = anomalies
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["duration_s"] = round(time.time() - started, 1)
    return report


def markdown(report: dict[str, Any]) -> str:
    r, s = report["results"], report["settings"]
    rows = [
        ("duration / rate asked", f"{s['seconds']} s at {s['rate']} msgs/s, {s['calls']} calls"),
        ("messages sent", f"{r['messages_sent']} ({r['messages_per_s']} msgs/s)"),
        ("Call-IDs answered", f"{r['call_ids_answered']} ({r['answered_per_s']}/s)"),
        ("calls set up by mutations (ACKed, BYEd)", str(r["invites_set_up_and_ended"])),
        ("liveness probes unanswered", f"{r['probes_unanswered']} of {r['probes']}"),
        (
            "transport deaths",
            f"{r['transport_deaths']} (first after message {r['transport_dead_after_message']})",
        ),
        ("tracebacks in the agent log", str(len(r["tracebacks"]))),
        ("agent RSS before / after", f"{r['rss_kib_before']} / {r['rss_kib_after']} KiB"),
        ("live calls echo intact", ", ".join(str(c["intact"]) for c in r["live_calls"])),
        ("live calls BYE answered", ", ".join(str(c["bye_answered"]) for c in r["live_calls"])),
    ]
    out = ["| sip_soak | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if r["tracebacks"]:
        out += ["", "tracebacks:"] + [f"- {t}" for t in r["tracebacks"][:20]]
    if report["anomalies"]:
        out += ["", "anomalies:"] + [f"- {a}" for a in report["anomalies"]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="how long to send, s")
    p.add_argument("--rate", type=int, default=300, help="messages per second")
    p.add_argument("--calls", type=int, default=2, help="live SIPp calls held meanwhile")
    p.add_argument("--seed", type=int, default=9, help="fuzz seed (fresh mutations: seed + 1)")
    p.add_argument("--probe-every", type=int, default=50, help="OPTIONS probe every N messages")
    p.add_argument("--rtp-ports", default="23000-23999", help="the agent's RTP port range")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    args = p.parse_args(argv)
    return run_benchmark(args, amain, markdown, workdir_prefix="sip-soak-")


if __name__ == "__main__":
    sys.exit(main())
