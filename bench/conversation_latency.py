#!/usr/bin/env python3
"""Conversation latency benchmark: voice-to-voice, agent overhead and barge-in, from captures.

    python bench/conversation_latency.py                  # both scenarios (under 3 minutes)
    python bench/conversation_latency.py --only v2v --calls 1 --turns 5
    python bench/conversation_latency.py --only barge-in --barge-calls 1
    python bench/conversation_latency.py --agent serve    # the plain `sipagent serve` binary

A real receptionist agent process (``sipagent serve --app receptionist``, peer-to-peer on
loopback) talks to wire-protocol fakes of Deepgram, OpenAI and ElevenLabs that run inside this
process (``tests/kit/fakes``), driven through the real provider SDKs, at the reference design's
latencies: STT final 300 ms after the caller's last voiced audio reached it (``final_latency``
0.3 with ``endpointing_ms`` 300, so the final leaves exactly at endpoint detection), LLM first
token 300 ms after the request, TTS first byte 100 ms after the request. A SIPp UAC
(``tests/peers/sipp/uac_call.xml``) streams a generated mu-law file of espeak-ng utterances
separated by silence. ``tcpdump -i lo --immediate-mode`` records the call's RTP, and every
latency is taken from packet arrival times in that capture.

Scenarios (``--only``; default both):

``v2v``
    ``--calls`` sequential calls of ``--turns`` utterances each; each reply is one short
    sentence (no tools), so the next utterance starts after the reply has finished.
    *caller speech end*: capture time of the caller's last voiced RTP packet of the utterance
    (voiced = the fake Deepgram's own VAD, mean |linear| > 200 over the 20 ms frame; the
    utterance is found by its known position in the file, mapped through the RTP timestamp).
    *voice-to-voice*: from there to the capture time of the agent's first voiced packet (any
    byte other than 0xFF: the agent's silence is all-0xFF frames, the fake TTS never sends 0xFF).
    *provider time*: nominal 700 ms (300 + 300 + 100), and measured from the fakes' own stamps:
    STT = final Result written to the websocket minus arrival at the fake of the utterance's last
    speech frame; LLM = request read -> first SSE chunk written; TTS = request read -> first
    audio chunk written. *agent overhead* = voice-to-voice minus either. The measured overhead
    is split into where it goes (inbound audio path, STT final -> LLM request, LLM first token
    -> TTS request, TTS first byte -> RTP on the wire); these segments add up to it exactly.
``barge-in``
    ``--barge-calls`` calls in which every utterance talks over a long (three sentence) reply,
    the first one over the greeting. *caller onset*: capture time of the first voiced caller
    packet of the interrupting utterance. *onset-to-silence*: to the capture time of the agent's
    last voiced packet before it goes quiet (the PAUSE step: ~100 ms of caller voice, queue
    kept). The INTERRUPT step (flush + cancel, on the STT's first words) and the decisions are
    not on the wire: the agent process records them (see below), giving *onset-to-pause* and
    *onset-to-interrupt* decision times and *decision-to-silence* = the PAUSE decision to the
    capture time of the first silent agent packet after it, plus the number of voiced packets
    the agent sent after deciding (should be 0).

The agent process (``--agent recording``, the default) is ``sipagent serve`` run through its own
command-line entry point (``sipagent.cli.main.app``) in a separate process, with
``sipagent.agent.run_agent`` replaced by an identical copy that, on shutdown, writes each
session's ``TurnTimings`` and barge-in events (agent ``loop.time()`` = CLOCK_MONOTONIC, shared
with this process) to a JSON file. ``--agent serve`` runs the installed ``sipagent`` binary
instead: the same wire numbers, without the agent-side decision times. Fakes stamp
``loop.time()`` too; captures are CLOCK_REALTIME, converted with ``time.time() -
time.monotonic()`` sampled around each scenario.

Code (``bench/conversation_bench/``): ``fakes`` (the instrumented fakes and their latencies),
``scenarios`` (what the caller says, the replies, the targets), ``runner`` (agent, SIPp and
tcpdump per call), ``agent`` (the recording agent), ``capture`` (reading the pcaps), ``stats``
(from captures and stamps to rows and percentiles), ``report`` (the markdown tables).

Results: markdown tables on stdout, JSON in ``bench/results/conversation_latency.json``.
Artifacts (pcaps, caller audio, agent log and dump, SIPp logs) go to a temporary directory, kept
with ``--keep`` or when something looked wrong. Before each scenario the script samples CPU use
for a second and looks for other SIPp/tcpdump/pytest/agent processes; either is an anomaly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test kit, as tests.kit

from benchlib import machine_info, run_benchmark  # noqa: E402
from conversation_bench.agent import agent_worker  # noqa: E402
from conversation_bench.fakes import (  # noqa: E402
    ENDPOINTING_MS,
    LLM_FIRST_TOKEN_S,
    NOMINAL_PROVIDER_S,
    STT_FINAL_S,
    TTS_FIRST_BYTE_S,
)
from conversation_bench.report import jsonable, markdown  # noqa: E402
from conversation_bench.runner import Bench  # noqa: E402
from conversation_bench.scenarios import LONG_REPLIES, SCENARIOS, TARGETS, V2V_REPLIES  # noqa: E402

from tests.kit.fakes.elevenlabs_server import MS_PER_CHAR, audio_duration_ms  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "conversation_latency.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--calls", type=int, default=3, help="v2v: sequential calls (default 3)")
    p.add_argument("--turns", type=int, default=7, help="v2v: utterances per call (default 7)")
    p.add_argument(
        "--gap",
        type=float,
        default=1.9,
        help="v2v: silence after each utterance's last voiced frame, s (default 1.9)",
    )
    p.add_argument("--barge-calls", type=int, default=3, help="barge-in: calls (default 3)")
    p.add_argument(
        "--barge-ins", type=int, default=5, help="barge-in: interruptions per call (default 5)"
    )
    p.add_argument("--barge-in-sensitivity", default="medium", choices=("low", "medium", "high"))
    p.add_argument(
        "--agent",
        choices=("recording", "serve"),
        default="recording",
        help="recording: `sipagent serve` via its CLI with a session dump (default); "
        "serve: the plain sipagent binary (no agent-side decision times)",
    )
    p.add_argument("--rtp-ports", default="23000-23999", help="the agent's RTP port range")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    p.add_argument("--time-limit", type=float, default=420.0, help="abort after this, s")
    args = p.parse_args(argv)
    if min(args.calls, args.turns, args.barge_calls, args.barge_ins) < 1:
        p.error("counts must be >= 1")
    reply_s = max(audio_duration_ms(r) for r in V2V_REPLIES) / 1000
    if args.gap < NOMINAL_PROVIDER_S + reply_s + 0.2:
        p.error(f"--gap must leave room for the reply: >= {NOMINAL_PROVIDER_S + reply_s + 0.2}")
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, main_task.cancel)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "conversation_latency",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "cwd": str(Path.cwd()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "scenarios": args.only,
            "v2v_calls": args.calls,
            "v2v_turns_per_call": args.turns,
            "v2v_gap_s": args.gap,
            "barge_calls": args.barge_calls,
            "barge_ins_per_call": args.barge_ins,
            "barge_in_sensitivity": args.barge_in_sensitivity,
            "agent": args.agent,
            "rtp_ports": args.rtp_ports,
            "fake_deepgram": {
                "final_latency_s": STT_FINAL_S,
                "endpointing_ms": ENDPOINTING_MS,
                "interim_interval_s": 0.2,
                "vad_threshold": 200,
            },
            "fake_openai": {"first_token_latency_s": LLM_FIRST_TOKEN_S, "inter_token_delay_s": 0},
            "fake_elevenlabs": {
                "first_byte_latency_s": TTS_FIRST_BYTE_S,
                "speed": None,
                "ms_per_char": MS_PER_CHAR,
            },
            "v2v_replies": V2V_REPLIES,
            "barge_in_replies": LONG_REPLIES,
        },
        "targets": TARGETS,
    }
    bench = Bench(args, workdir)
    try:
        report["results"] = await asyncio.wait_for(bench.run(), args.time_limit)
    finally:
        report["agent_commands"] = bench.agent_cmds
        report["anomalies"] = bench.anomalies
        report["machine"]["loadavg_end"] = list(os.getloadavg())
        report["duration_s"] = round(time.time() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--agent-worker"]:
        return agent_worker(Path(argv[1]), argv[2:])
    args = parse_args(argv)
    return run_benchmark(
        args, amain, markdown, workdir_prefix="sipagent-convbench-", json_default=jsonable
    )


if __name__ == "__main__":
    sys.exit(main())
