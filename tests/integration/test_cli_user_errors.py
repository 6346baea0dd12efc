"""Every command with bad values: one line naming the value and the fix, exit code 2, and
never a traceback."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sipagent.cli.main import app
from sipagent.storage import upgrade
from tests.kit.agentlib import free_sip_port

UNREACHABLE_POSTGRES = "postgresql+psycopg://sipagent:hunter2@127.0.0.1:1/sipagent"

# (command line, what the one error line must say). {db} is an existing, migrated database;
# {missing} a database file that does not exist (and must not be created).
BAD_INPUTS = [
    (["serve", "--rtp-ports", "abc"], "--rtp-ports 'abc': bad RTP port range 'abc'"),
    (["serve", "--rtp-ports", "5-4"], "want e.g. 20000-20999"),
    (["serve", "--bind", "abc:xyz"], "--bind 'abc:xyz': bad port in 'abc:xyz'"),
    (["serve", "--status-bind", "host:99999"], "port out of range in 'host:99999'"),
    (["serve", "--allowed-sources", "1.2.3.4/99"], "bad address or CIDR '1.2.3.4/99'"),
    (["serve", "--app", "nope"], "--app 'nope': 'nope' is not one of echo | player"),
    (["serve", "--stt", "whisper"], "'whisper' is not one of auto | deepgram | offline"),
    (["serve", "--barge-in-sensitivity", "loud"], "is not one of low | medium | high"),
    (["serve", "--register-expires", "5"], "--register-expires '5': Input should be greater"),
    (["serve", "--max-calls", "many"], "--max-calls 'many': Input should be a valid integer"),
    (["serve", "--keepalive-interval", "-1"], "--keepalive-interval '-1'"),
    (["serve", "--bind", "10.255.255.1:5060"], "10.255.255.1 is not an address of this machine"),
    (["serve", "--bind", "nosuch.invalid:5060"], "cannot resolve nosuch.invalid"),
    (["serve", "--app", "player", "--player-file", "/no/such.ulaw"], "cannot read the player"),
    (["serve", "--app", "receptionist", "--clinic-file", "/no/such.toml"], "/no/such.toml"),
    (["serve", "--app", "receptionist", "--stt", "deepgram"], "set its key in the environment"),
    (
        ["serve", "--app", "receptionist", "--database-url", "nonsense"],
        "'nonsense' is not a database URL",
    ),
    (
        ["serve", "--app", "receptionist", "--database-url", "sqlite:////proc/no/agent.db"],
        "cannot create /proc/no for database",
    ),
    (
        ["serve", "--app", "receptionist", "--database-url", UNREACHABLE_POSTGRES],
        "cannot use database postgresql+psycopg://sipagent:***@127.0.0.1:1/sipagent",
    ),
    (["serve", "--server", "nosuch.invalid"], "cannot resolve registrar host 'nosuch.invalid'"),
    (["register"], "register needs a registrar: --server"),
    (["register", "--server", "nosuch.invalid"], "cannot resolve registrar host 'nosuch.invalid'"),
    (["register", "--server", "127.0.0.1:http"], "--server"),
    (["call", "100"], "'100' has no host: give user@host or set --server"),
    (["call", "sip:x@nosuch.invalid"], "cannot resolve the callee's host 'nosuch.invalid'"),
    (["call", "100", "--server", "nosuch.invalid"], "cannot resolve registrar host"),
    (["call", "sip:x@127.0.0.1", "--play", "/no/such.wav"], "cannot read /no/such.wav"),
    (["call", "sip:x@127.0.0.1", "--hangup-after", "-1"], "--hangup-after -1: must be positive"),
    (["call", "sip:x@127.0.0.1", "--rtp-ports", "abc"], "bad RTP port range 'abc'"),
    (["calls", "list", "--database-url", "sqlite:///{missing}"], "no database at {missing} yet"),
    (["calls", "show", "abc", "--database-url", "sqlite:///{missing}"], "no database at"),
    (["calls", "list", "--database-url", UNREACHABLE_POSTGRES], "start PostgreSQL"),
    (
        ["appointments", "list", "--day", "blursday", "--database-url", "sqlite:///{db}"],
        "--day 'blursday' is not a day: use today, tomorrow, a weekday name or YYYY-MM-DD",
    ),
    (
        ["appointments", "list", "--day", "2026-13-45", "--database-url", "sqlite:///{db}"],
        "--day '2026-13-45' is not a day",
    ),
    (["appointments", "cancel", "1", "--database-url", "sqlite:///{missing}"], "no database"),
    (["db", "upgrade", "--database-url", "mysql://u@h/db"], "mysql is not supported"),
    (["db", "upgrade", "--database-url", "sqlite:////proc/no/x.db"], "cannot create /proc/no"),
    (["db", "upgrade", "--database-url", UNREACHABLE_POSTGRES], "Connection refused"),
    (
        ["db", "upgrade", "--revision", "9999", "--database-url", "sqlite:///{db}"],
        "cannot upgrade",
    ),
    (["doctor", "--rtp-ports", "abc"], "bad RTP port range 'abc'"),
    (["doctor", "--app", "nope"], "'nope' is not one of"),
    (["console", "--input", "/no/such.wav", "--output", "x.wav"], "cannot read /no/such.wav"),
    (["demo", "--database-url", "nonsense"], "'nonsense' is not a database URL"),
]


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("user-errors")
    upgrade(f"sqlite:///{folder / 'agent.db'}")
    return {"db": str(folder / "agent.db"), "missing": str(folder / "missing.db")}


def invoke(args: list[str], env: dict[str, str] | None = None):
    # The runner's width: a long line must still be one line (soft-wrapped errors).
    return CliRunner().invoke(app, args, env={"COLUMNS": "60", **(env or {})})


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    # A traceback would be printed, or caught by the runner as an exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.output


@pytest.mark.parametrize(
    ("args", "expected"), BAD_INPUTS, ids=[" ".join(args)[:60] for args, _ in BAD_INPUTS]
)
def test_bad_values_get_one_line_and_exit_2(args, expected, databases, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    monkeypatch.setenv("SIPAGENT_STATUS_BIND", "")
    args = [arg.format(**databases) for arg in args]
    result = invoke(args)
    assert_one_line_error(result, expected.format(**databases))
    assert "hunter2" not in result.output
    assert not Path(databases["missing"]).exists()  # read commands create nothing


def test_bad_environment_values_are_named_by_their_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["serve"], env={"SIPAGENT_MAX_CALLS": "lots"})
    assert_one_line_error(result, "SIPAGENT_MAX_CALLS 'lots': Input should be a valid integer")
    result = invoke(["calls", "list"], env={"DATABASE_URL": "nonsense"})
    assert_one_line_error(result, "'nonsense' is not a database URL")


def test_a_typo_in_a_variable_name_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SIPAGENT_BARGEIN_SENSITIVITY=high\n")
    result = invoke(["doctor", "--rtp-ports", "abc"], env={"SIPAGENT_MAX_CALL": "3"})
    assert (
        "warning: SIPAGENT_MAX_CALL is not a sipagent setting and is ignored (did you mean "
        "SIPAGENT_MAX_CALLS?)" in result.output
    )
    assert "SIPAGENT_BARGEIN_SENSITIVITY is not a sipagent setting" in result.output
    assert "did you mean SIPAGENT_BARGE_IN_SENSITIVITY?" in result.output


def test_tomorrow_and_weekdays_are_days(databases, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for day in ("today", "tomorrow", "friday", "2026-12-03"):
        result = invoke(
            ["appointments", "list", "--day", day, "--database-url", f"sqlite:///{databases['db']}"]
        )
        assert result.exit_code == 0, result.output
        assert f"database sqlite:///{databases['db']}" in result.output


async def test_a_busy_sip_port_is_named(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        for command in (
            ["serve"],
            ["call", "sip:x@127.0.0.1"],
            ["register", "--server", "127.0.0.1"],
        ):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sipagent.cli.main", *command, "--bind", taken,
                cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "SIPAGENT_STATUS_BIND": "", "COLUMNS": "60",
                     "PYTHONPATH": ":".join(sys.path)},
            )  # fmt: skip
            _, errors = await asyncio.wait_for(process.communicate(), 30)
            text = errors.decode()
            assert process.returncode == 2, text
            assert "Traceback" not in text
            assert text.strip().splitlines()[-1] == (
                f"error: cannot listen for SIP: UDP {taken} is in use by another process: stop "
                "the other process (another sipagent or a PBX?) or choose another port "
                "(--bind HOST:PORT / SIPAGENT_BIND)"
            ), text


@pytest.mark.peers
async def test_register_without_a_password_says_so(kamailio, tmp_path):
    kam = await kamailio()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "register", "--server", kam.address,
        "--bind", f"127.0.0.1:{free_sip_port()}",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, (output + errors).decode()
    assert errors.decode().strip() == (
        f"error: {kam.address} asks for a password (401) and none is set: --password or "
        "SIPAGENT_PASSWORD"
    )
