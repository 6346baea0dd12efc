"""`sipagent serve` as a real process: answers in peer-to-peer mode, env settings, clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from sipagent.cli.main import app
from tests.kit.agentlib import free_sip_port, rtp_range
from tests.kit.peerlib.common import wait_udp_bound


async def serve_echo_one_call(
    sipp, audio_dir, port: int, *flags: str, hold_ms: int,
    after_call: Callable[[int], None] = lambda pid: None,
) -> tuple[int, str]:  # fmt: skip
    """`sipagent serve --app echo FLAGS` on `port` answers one SIPp call, then gets SIGTERM:
    (exit code, output). `after_call(pid)` looks at the agent process before the SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "serve", "--app", "echo", *flags,
        "--bind", f"127.0.0.1:{port}", "--rtp-ports", rtp_range(), "--status-bind", "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_udp_bound(port, timeout=10)
        caller = sipp("uac_call.xml", remote=f"127.0.0.1:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": hold_ms})  # fmt: skip
        (await caller.run()).check()
        after_call(process.pid)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_serve_help_lists_every_setting():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--server", "--user", "--password", "--domain", "--bind", "--public-ip",
                 "--rtp-ports", "--app"):  # fmt: skip
        assert flag in result.output


def test_bad_settings_exit_2_with_a_clear_message():
    result = CliRunner().invoke(app, ["serve", "--rtp-ports", "5-4"])
    assert result.exit_code == 2
    assert "RTP port range" in result.output


@pytest.mark.peers
async def test_serve_process_answers_and_stops_cleanly(sipp, audio_dir, tmp_path):
    port = free_sip_port()
    env = {
        **os.environ,
        "SIPAGENT_BIND": f"127.0.0.1:{port}",  # settings from the environment
        "SIPAGENT_RTP_PORTS": rtp_range(),
        "SIPAGENT_PASSWORD": "s3cret-never-logged",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "serve", "--app", "echo",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_udp_bound(port, timeout=10)
        caller = sipp("uac_call.xml", remote=f"127.0.0.1:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": 8000})  # fmt: skip
        await caller.start(wait_bound=False)
        await asyncio.sleep(2.0)
        process.send_signal(signal.SIGTERM)  # the active call gets a BYE, then we exit 0
        output, _ = await asyncio.wait_for(process.communicate(), 15)
        result = (await caller.wait()).check()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    assert "BYE" in result.received_requests()
    assert "peer-to-peer mode" in text and "agent shutting down" in text
    assert "s3cret-never-logged" not in text


@pytest.mark.peers
async def test_serve_logs_carry_the_call_id(sipp, audio_dir):
    port = free_sip_port()
    _, text = await serve_echo_one_call(sipp, audio_dir, port, hold_ms=1000)
    lines = text.splitlines()
    ended = next(line for line in lines if " ended: caller hung up" in line)
    call_id = ended.split("call ", 1)[1].split(" ended")[0]
    assert f"[{call_id}]" in ended  # the context carries the Call-ID onto the line
    listening = f"SIP listening on 127.0.0.1:{port}, advertising 127.0.0.1:{port}"
    assert any(line.endswith(listening) and "[-]" in line for line in lines)


async def test_serve_says_what_runs_and_where_the_database_is(tmp_path):
    port = free_sip_port()
    database = tmp_path / "data" / "agent.db"  # its folder is created at start
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-never-logged",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # never contacted before a call
        "SIPAGENT_DATABASE_URL": f"sqlite:///{database}",
        "SIPAGENT_MAX_CALL": "3",  # a typo: warned about, not silently ignored
    }
    for name in ("DEEPGRAM_API_KEY", "ELEVENLABS_API_KEY", "DATABASE_URL"):
        env.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "serve", "--app", "receptionist",
        "--bind", f"127.0.0.1:{port}", "--rtp-ports", rtp_range(), "--status-bind", "",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_udp_bound(port, timeout=20)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    assert (
        "sipagent serve: app receptionist: STT offline (whisper), LLM openai (gpt-4o-mini "
        "at http://127.0.0.1:9/v1), TTS offline (espeak-ng)"
    ) in text
    assert f"database sqlite:///{database} (revision 0002)" in text
    assert "SIPAGENT_MAX_CALL is not a sipagent setting" in text
    assert "sk-never-logged" not in text


def test_loop_uvloop_without_uvloop_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    result = CliRunner().invoke(app, ["serve", "--app", "echo", "--loop", "uvloop"])
    assert result.exit_code == 2
    assert "uvloop is not installed" in result.output
    assert "pip install 'sipagent[uvloop]'" in result.output


def test_unknown_event_loop_is_refused():
    result = CliRunner().invoke(app, ["serve", "--loop", "trio"])
    assert result.exit_code == 2
    assert "--event-loop 'trio': 'trio' is not one of asyncio | auto | uvloop" in result.output


@pytest.mark.peers
async def test_serve_on_uvloop_answers_a_call(sipp, audio_dir):
    pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
    code, text = await serve_echo_one_call(
        sipp, audio_dir, free_sip_port(), "--loop", "uvloop", "--verbose", hold_ms=2000
    )
    assert code == 0, text
    assert "event loop: uvloop" in text
    assert " ended: caller hung up" in text
    # The echo went both ways: the session's closing stats (--verbose) count packets each way.
    packets_in = int(re.search(r"packets_in=(\d+)", text).group(1))  # type: ignore[union-attr]
    packets_out = int(re.search(r"packets_out=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert packets_in >= 50 and packets_out >= 50, (packets_in, packets_out)


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_RR needs root or CAP_SYS_NICE")
async def test_serve_realtime_priority_puts_the_agent_under_sched_rr(sipp, audio_dir):
    # As `asterisk -p`: the agent's media before the machine's other work. Every thread of
    # the process (the loop's, the database's, the executor's) inherits it.
    policies: dict[int, int] = {}
    priorities: dict[int, int] = {}

    def read_scheduling(pid: int) -> None:  # after a call: the threads a call starts exist too
        for tid in (int(name) for name in os.listdir(f"/proc/{pid}/task")):
            policies[tid] = os.sched_getscheduler(tid)
            priorities[tid] = os.sched_getparam(tid).sched_priority

    code, text = await serve_echo_one_call(
        sipp, audio_dir, free_sip_port(), "--realtime-priority", "7", hold_ms=1000,
        after_call=read_scheduling,
    )  # fmt: skip
    assert code == 0, text
    assert "scheduling: SCHED_RR, priority 7" in text
    assert set(policies.values()) == {os.SCHED_RR}, (policies, text[-2000:])
    assert set(priorities.values()) == {7}
