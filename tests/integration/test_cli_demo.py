"""`sipagent demo` (the README's main job) as a user runs it, on a fresh SQLite in an empty
directory; then the record commands read what it stored."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest

pytestmark = [pytest.mark.peers]


async def cli(cwd, *args: str, timeout: float = 30) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", *args,
        cwd=cwd, env={**os.environ, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, output.decode()


async def test_demo_then_calls_and_appointments(tmp_path):
    code, text = await cli(tmp_path, "demo", timeout=150)
    assert code == 0, text
    assert "caller: I'd like to book a cleaning" in text
    assert "Appointment #1 as stored" in text and "David Miller" in text
    assert "+15550123456" in text and "cleaning" in text
    assert "Goodbye" in text and "offline mode" in text
    assert (tmp_path / "sipagent.db").exists()

    code, calls = await cli(tmp_path, "calls", "list")
    assert code == 0 and "agent ended the call (offline)" in calls, calls
    call_id = re.search(r"│ ([0-9a-f]{32}@127\.0\.0\.1)", calls).group(1)
    code, shown = await cli(tmp_path, "calls", "show", call_id[:12])
    # Case as the recogniser writes it (Whisper capitalises, pocketsphinx does not).
    assert code == 0 and "i'd like to book a cleaning" in shown.lower(), shown
    assert "STT final" in shown, shown

    code, listed = await cli(tmp_path, "appointments", "list")
    assert code == 0 and "David Miller" in listed and "booked" in listed, listed
    code, cancelled = await cli(tmp_path, "appointments", "cancel", "1")
    assert code == 0 and "cancelled #1: David Miller" in cancelled, cancelled
    code, listed = await cli(tmp_path, "appointments", "list")
    assert "David Miller" not in listed
    code, missing = await cli(tmp_path, "appointments", "cancel", "1")
    assert code == 1 and "1" in missing, missing  # already cancelled: a clear error
