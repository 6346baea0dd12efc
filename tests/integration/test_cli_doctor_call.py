"""`sipagent doctor` and `sipagent call` as a user runs them: real processes, real peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
import sys
import wave
from pathlib import Path

import pytest
from agentlib import free_sip_port, rtp_range, running_agent, wait_until
from test_agent_calls import FRAME, assert_same_frames, recording
from typer.testing import CliRunner

from sipagent.cli.dial import load_audio
from sipagent.cli.main import app
from sipagent.storage import upgrade

# Set in the doctor's environment to prove they never reach its output.
SECRETS = {
    "SIPAGENT_PASSWORD": "sip-pw-never-shown",
    "DEEPGRAM_API_KEY": "dg-key-never-shown",
    "OPENAI_API_KEY": "sk-key-never-shown",
}
_INHERITED_SETTINGS = re.compile(r"^(SIPAGENT_|DEEPGRAM_|OPENAI_|ELEVENLABS_|DATABASE_URL$)")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test runner's environment minus any agent settings, plus a private database."""
    env = {k: v for k, v in os.environ.items() if not _INHERITED_SETTINGS.match(k)}
    env.update(
        COLUMNS="200",  # one table row per line, whatever the terminal
        SIPAGENT_DATABASE_URL=f"sqlite:///{tmp_path / 'agent.db'}",
        SIPAGENT_STATUS_BIND=f"127.0.0.1:{free_tcp_port()}",
    )
    env.update(extra)
    return env


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_cli(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 40
) -> tuple[int, str]:
    # cwd: a directory without a .env, so only the environment given here configures the CLI.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, output.decode()


def row_status(text: str, check: str) -> str:
    match = re.search(rf"│ {re.escape(check)}\s+│ (PASS|WARN|FAIL)", text)
    assert match, f"no {check!r} row in:\n{text}"
    return match.group(1)


# -- doctor --------------------------------------------------------------------------------
@pytest.mark.peers
async def test_doctor_passes_a_good_config_without_showing_keys(kamailio, tmp_path):
    kam = await kamailio(qop=True)
    env = clean_env(tmp_path, **SECRETS)
    upgrade(env["SIPAGENT_DATABASE_URL"])
    code, text = await run_cli(
        tmp_path, env, "doctor", "--server", kam.address,
        "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
    )  # fmt: skip
    assert code == 0, text
    assert "FAIL" not in text and "0 failed" in text
    for check in ("settings", "SIP bind", "RTP range", "RTP ports free", "advertised address",
                  "registrar", "STT provider", "LLM provider", "pocketsphinx model",
                  "receptionist LM", "espeak-ng data", "database", "status bind"):  # fmt: skip
        assert row_status(text, check) == "PASS", check
    assert f"{kam.address} answered OPTIONS" in text
    assert "DEEPGRAM_API_KEY set" in text and "OPENAI_API_KEY set" in text
    # No ElevenLabs key: the offline voice is used, which is worth a warning, not a failure.
    assert row_status(text, "TTS provider") == "WARN" and "ELEVENLABS_API_KEY missing" in text
    assert "revision 0001" in text
    for secret in SECRETS.values():
        assert secret not in text


async def test_doctor_fails_when_the_sip_port_is_taken(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        code, text = await run_cli(tmp_path, clean_env(tmp_path), "doctor", "--bind", taken)
    assert code == 1, text
    assert row_status(text, "SIP bind") == "FAIL"
    assert f"UDP {taken} is in use" in text and "--bind" in text
    assert "1 failed" in text


def test_doctor_reports_bad_settings_as_a_failure(tmp_path):
    result = CliRunner().invoke(
        app, ["doctor", "--rtp-ports", "5-4"], env=clean_env(tmp_path), catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "FAIL" in result.output and "rtp_ports" in result.output


# -- call ----------------------------------------------------------------------------------
@pytest.mark.peers
async def test_call_plays_a_file_and_records_what_the_far_end_sends(sipp, audio_dir, tmp_path):
    agent_file = (audio_dir / "agent.ulaw").read_bytes()
    uas = sipp("uas_call.xml", params={"AUDIO": audio_dir / "agent.ulaw", "BYE_WAIT_MS": 20000})
    await uas.start()
    record_dir = tmp_path / "rec"
    # Long enough for SIPp's whole file to arrive, then our BYE ends its scenario.
    hangup_after = len(agent_file) / 8000 + 1.5
    code, text = await run_cli(
        tmp_path, clean_env(tmp_path), "call", f"sip:sipp@{uas.address}",
        "--play", str(audio_dir / "pattern.ulaw"), "--record", str(record_dir),
        "--hangup-after", f"{hangup_after:.2f}",
        "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
    )  # fmt: skip
    assert code == 0, text
    assert "dialling sip:sipp@" in text and "answered: PCMU" in text, text
    assert "we hung up (--hangup-after" in text and "BYE answered 200" in text, text
    (await uas.wait()).check()
    received = recording(record_dir)
    whole = len(agent_file) - len(agent_file) % FRAME
    assert whole <= len(received) <= whole + FRAME  # at most SIPp's padded last frame extra
    assert_same_frames(received[:whole], agent_file)


@pytest.mark.peers
async def test_call_to_a_busy_callee_exits_1_with_the_status(sipp, tmp_path):
    uas = sipp("uas_reject.xml", params={"CODE": 486, "REASON": "Busy Here"})
    await uas.start()
    code, text = await run_cli(
        tmp_path, clean_env(tmp_path), "call", f"sipp@{uas.address}",
        "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
    )  # fmt: skip
    assert code == 1, text
    assert "not answered: 486 Busy Here" in text
    (await uas.wait()).check()  # it got its ACK


@pytest.mark.peers
async def test_call_with_the_agent_greets_and_stores_the_call(sipp, audio_dir, tmp_path):
    uas = sipp("uas_call.xml", params={"AUDIO": audio_dir / "agent.ulaw", "BYE_WAIT_MS": 20000})
    await uas.start()
    env = clean_env(tmp_path)
    code, text = await run_cli(
        tmp_path, env, "call", f"sip:sipp@{uas.address}", "--agent", "--hangup-after", "3",
        "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
    )  # fmt: skip
    assert code == 0, text
    assert "answered: PCMU" in text and "BYE answered 200" in text, text
    (await uas.wait()).check()
    database = env["SIPAGENT_DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(database)) as db:
        calls = db.execute("SELECT id, end_reason FROM calls").fetchall()
        greeting = db.execute("SELECT text FROM turns WHERE role = 'assistant'").fetchone()
    # The end is written after the hang-up: stored only if the command waited for it.
    assert calls == [(1, "we hung up (--hangup-after 3 s)")]
    assert greeting and greeting[0].startswith("Thank you for calling")


def test_call_rejects_a_wav_that_is_not_8khz_mono_16bit(tmp_path):
    wide = tmp_path / "wide.wav"
    with wave.open(str(wide), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x00\x10" * 1600)
    runner = CliRunner()
    result = runner.invoke(app, ["call", "sip:x@127.0.0.1", "--play", str(wide)])
    text = " ".join(result.output.split())  # rich wraps at the runner's width
    assert result.exit_code == 2
    assert "16000 Hz" in text and "need 8000 Hz mono 16-bit" in text
    result = runner.invoke(app, ["call", "sip:x@127.0.0.1", "--agent", "--play", str(wide)])
    assert result.exit_code == 2 and "cannot be combined" in result.output
    result = runner.invoke(app, ["call", "sip:x@127.0.0.1", "--rtp-ports", "5-4"])
    assert result.exit_code == 2 and "RTP port range" in " ".join(result.output.split())


def test_a_pcm_wav_plays_as_the_same_mulaw(audio_dir):
    assert load_audio(audio_dir / "pattern.wav") == (audio_dir / "pattern.ulaw").read_bytes()


@pytest.mark.peers
async def test_call_leaves_the_serving_agents_binding_alone(kamailio, tmp_path):
    # A single-contact registrar (Asterisk max_contacts=1, remove_existing=yes) that also
    # wants credentials on every INVITE, as trunks do for outbound calls.
    kam = await kamailio(single_contact=True, invite_auth=True)
    env = clean_env(tmp_path, SIPAGENT_PASSWORD="agentpw")
    async with running_agent(server=kam.address, password="agentpw", app="echo") as serving:
        await wait_until(lambda: serving.registration.status.state == "registered", 10, "REGISTER")
        bindings = await kam.registered_contacts("agent")
        code, text = await run_cli(
            tmp_path, env, "call", "agent", "--server", kam.address, "--hangup-after", "1",
            "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
        )  # fmt: skip
        assert code == 0 and "answered: PCMU" in text, text  # through the 407, to the agent
        assert len(serving.ended_calls) == 1
        assert await kam.registered_contacts("agent") == bindings
        # The rig really is single-contact: a REGISTER for the same AOR (what `call` used to
        # send) replaces the serving agent's binding.
        code, text = await run_cli(
            tmp_path, env, "register", "--server", kam.address,
            "--bind", f"127.0.0.1:{free_sip_port()}",
        )  # fmt: skip
        assert code == 0, text
        assert await kam.registered_contacts("agent") != bindings
