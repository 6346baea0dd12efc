"""Issue 9: the 1,194-message corpus (RFC 4475 + legal-unusual + fuzz) during a live call.

`sipagent serve --app echo` runs as a real process; SIPp holds a call and streams RTP; a
separate UDP socket sends the whole corpus, and an OPTIONS from a fresh socket checks that SIP
is still answered. The classified messages go first, one at a time, each from a loopback address
of its own (a fresh peer: the agent's per-source INVITE limits, which the fuzz trips on purpose,
must not decide their answer), each followed by a probe; then the 1,084 fuzzed ones at 400
messages/s from one socket, a probe every 50. Then: the live call kept its echo to the end and its
BYE was answered, the agent's log has no traceback, and every classified message (RFC 4475 and
legal-unusual) got the answer tests/kit/sip_corpus.py says the RFC asks for. Failures are listed per
message name.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.kit.agentlib import free_sip_port, rtp_range
from tests.kit.peerlib.common import wait_udp_bound
from tests.kit.peerlib.sip_blaster import (
    BlastReport,
    CorpusSender,
    echo_check,
    exchange_each,
    numbered_frames,
    probe_options,
    tracebacks,
)
from tests.kit.sip_corpus import addressed, full_corpus

pytestmark = [pytest.mark.peers]

CALL_SECONDS = 9


async def start_agent(port: int, log_path: Path) -> asyncio.subprocess.Process:
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "serve", "--app", "echo",
        "--bind", f"127.0.0.1:{port}", "--rtp-ports", rtp_range(), "--status-bind", "",
        stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
        cwd=log_path.parent,  # the agent's code comes from where the test's does, not the cwd
    )  # fmt: skip
    log.close()
    await wait_udp_bound(port, timeout=15)
    return process


async def stop_agent(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_corpus_during_a_live_call(sipp, capture, tmp_path):
    audio = tmp_path / "numbered.ulaw"
    audio.write_bytes(numbered_frames(CALL_SECONDS * 50 + 100))
    port = free_sip_port()
    log_path = tmp_path / "agent.log"
    process = await start_agent(port, log_path)
    agent = ("127.0.0.1", port)
    cases = full_corpus()
    report = BlastReport()
    try:
        caller = sipp("uac_call.xml", remote=f"127.0.0.1:{port}", service="agent", timeout=40,
                      params={"AUDIO": audio, "HOLD_MS": CALL_SECONDS * 1000})  # fmt: skip
        async with capture(caller.media_port) as cap:
            await caller.start(wait_bound=False)
            await asyncio.sleep(1.0)  # the call is up and streaming before the corpus starts
            # The classified messages one at a time, each from a peer address of its own and
            # waiting for its answer; then the fuzz, paced, from one socket.
            fixed = cases[: sum(1 for case in cases if case.verdict != "fuzz")]  # they come first
            await exchange_each(fixed, lambda case, sender: addressed(case, agent, sender),
                                agent, report)  # fmt: skip
            async with CorpusSender(agent) as sender:
                wire = [addressed(case, agent, sender.address) for case in cases[len(fixed) :]]
                await sender.blast(wire, rate=400, probe_every=50, settle=2.0, offset=len(fixed),
                                   report=report)  # fmt: skip
            result = await caller.wait()
        alive_at_end = await probe_options(agent)
    finally:
        await stop_agent(process)
    log_text = log_path.read_text(errors="replace")
    problems: list[str] = []
    if report.transport_dead_after is not None or not alive_at_end:
        index = report.transport_dead_after
        name = cases[index].name if index is not None else "the end"
        problems.append(
            f"SIP transport dead: first unanswered probe after message {index} ({name})"
        )
    if not result.ok:
        problems.append(f"the live call failed (BYE unanswered?):\n{result.describe()}")
    echo = echo_check(cap.datagrams(), caller.media_port)
    problems += [f"live call echo: {p}" for p in echo["problems"]]
    problems += [f"traceback: {t}" for t in tracebacks(log_text)]
    failures = report.failures(cases)
    problems += [f"{name}: {what}" for name, what in failures.items()]
    (tmp_path / "failures.txt").write_text("\n".join(problems) + "\n")
    assert not problems, f"{len(problems)} problems (also in {tmp_path}/failures.txt):\n" + (
        "\n".join(problems)
    )
