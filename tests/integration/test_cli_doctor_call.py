"""`sipagent doctor` and `sipagent call` as a user runs them: real processes, real peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import sys
import wave
from pathlib import Path

import pytest
from test_agent_calls import FRAME, assert_same_frames, recording
from typer.testing import CliRunner

from sipagent.cli.dial import load_audio
from sipagent.cli.main import app
from sipagent.storage import upgrade
from tests.kit.agentlib import free_sip_port, rtp_range, running_agent, wait_until
from tests.kit.fakes.deepgram_server import FakeDeepgramServer
from tests.kit.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.kit.fakes.openai_server import FakeOpenAIServer

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


async def run_doctor(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, dict]:
    """`doctor --json`: the exit code and the report, by check name (read as data, so no
    terminal width or table wrapping can hide a row)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "doctor", "--json", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await asyncio.wait_for(process.communicate(), 40)
    assert b"Traceback" not in errors, errors.decode()
    report = json.loads(output)
    report["rows"] = {check["name"]: check for check in report["checks"]}
    return process.returncode or 0, report


# -- doctor --------------------------------------------------------------------------------
@pytest.mark.peers
async def test_doctor_passes_a_good_config_without_showing_keys(kamailio, tmp_path):
    kam = await kamailio(qop=True)
    env = clean_env(tmp_path, **SECRETS)
    upgrade(env["SIPAGENT_DATABASE_URL"])
    # The keys are set but the services are far away (nothing listens there): unverified.
    unreachable = "http://127.0.0.1:9"
    code, report = await run_doctor(
        tmp_path, env, "--server", kam.address, "--app", "receptionist",
        "--bind", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range(),
        "--deepgram-url", unreachable, "--openai-base-url", unreachable,
    )  # fmt: skip
    rows = report["rows"]
    assert code == 0 and report["ok"], report
    assert report["summary"].endswith("0 failed")
    for check in ("settings", "app", "SIP bind", "RTP range", "RTP ports free",
                  "advertised address", "registrar", "STT provider", "LLM provider",
                  "pocketsphinx model", "receptionist LM", "espeak-ng data", "database",
                  "status bind"):  # fmt: skip
        assert rows[check]["status"] == "PASS", rows[check]
    assert f"{kam.address} answered OPTIONS" in rows["registrar"]["detail"]
    assert "DEEPGRAM_API_KEY set" in rows["STT provider"]["detail"]
    assert "OPENAI_API_KEY set" in rows["LLM provider"]["detail"]
    # No ElevenLabs key: the offline voice is used, which is worth a warning, not a failure.
    assert rows["TTS provider"]["status"] == "WARN"
    assert "ELEVENLABS_API_KEY missing" in rows["TTS provider"]["detail"]
    assert rows["STT service"]["status"] == rows["LLM service"]["status"] == "WARN"
    assert "key not verified" in rows["LLM service"]["detail"]
    assert "TTS service" not in rows  # offline: nothing to ask
    assert "revision 0002" in rows["database"]["detail"]
    assert "app receptionist: STT deepgram (nova-3), LLM openai" in rows["app"]["detail"]
    for secret in SECRETS.values():
        assert secret not in json.dumps(report)


async def test_doctor_asks_each_cloud_service_with_its_key(tmp_path):
    deepgram = FakeDeepgramServer()
    openai = FakeOpenAIServer()
    openai.missing_models.add("gpt-nonesuch")
    elevenlabs = FakeElevenLabsServer()
    async with deepgram, openai, elevenlabs:
        env = clean_env(
            tmp_path,
            DEEPGRAM_API_KEY="wrong-key",
            SIPAGENT_DEEPGRAM_URL=deepgram.url,
            OPENAI_API_KEY=openai.api_key,
            OPENAI_BASE_URL=openai.base_url,
            ELEVENLABS_API_KEY=elevenlabs.api_key,
            SIPAGENT_ELEVENLABS_BASE_URL=elevenlabs.base_url,
        )
        args = ("--app", "receptionist", "--bind", f"127.0.0.1:{free_sip_port()}")
        code, report = await run_doctor(tmp_path, env, *args, "--openai-model", "gpt-nonesuch")
        rows = report["rows"]
        assert code == 1 and not report["ok"]
        # Each service's own reason for refusing.
        assert rows["STT service"]["status"] == "FAIL"
        assert "401 Invalid credentials." in rows["STT service"]["detail"]
        assert rows["LLM service"]["status"] == "FAIL"
        assert "model gpt-nonesuch not found" in rows["LLM service"]["detail"]
        assert rows["TTS service"]["status"] == "PASS", rows["TTS service"]
        assert [r.voice_id for r in elevenlabs.requests] == ["21m00Tcm4TlvDq8ikWAM"]

        env["DEEPGRAM_API_KEY"] = deepgram.api_key
        code, report = await run_doctor(tmp_path, env, *args, "--openai-model", "gpt-4o-mini")
        rows = report["rows"]
        assert rows["STT service"]["status"] == rows["LLM service"]["status"] == "PASS", rows
        assert "key accepted, model gpt-4o-mini available" in rows["LLM service"]["detail"]
        assert deepgram.connection_count == 1  # the handshake, then closed


async def test_doctor_fails_a_broken_clinic_file_as_serve_would(tmp_path):
    clinic = tmp_path / "clinic.toml"
    clinic.write_text('[hours]\nopens = "nine"\n')
    env = clean_env(tmp_path)
    args = ("--app", "receptionist", "--clinic-file", str(clinic))
    code, report = await run_doctor(tmp_path, env, *args, "--bind", f"127.0.0.1:{free_sip_port()}")
    assert code == 1
    app_row = report["rows"]["app"]
    assert app_row["status"] == "FAIL" and "'nine' is not a time like 09:00" in app_row["detail"]
    code, text = await run_cli(tmp_path, env, "serve", *args)
    assert code == 2 and "'nine' is not a time like 09:00" in text, text


async def test_doctor_fails_when_the_sip_port_is_taken(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        code, report = await run_doctor(tmp_path, clean_env(tmp_path), "--bind", taken)
    assert code == 1
    row = report["rows"]["SIP bind"]
    assert row["status"] == "FAIL" and f"UDP {taken} is in use" in row["detail"]
    assert "--bind" in row["fix"]
    assert report["summary"].endswith("1 failed")


def test_doctor_refuses_bad_settings_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["doctor", "--rtp-ports", "5-4"], env=clean_env(tmp_path), catch_exceptions=False
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --rtp-ports '5-4': bad RTP port range '5-4': want e.g. 20000-20999 "
        "(fix the flag or variable)"
    ]


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
