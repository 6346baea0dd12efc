"""`sipagent demo`, the README's main job, as a user runs it: a subprocess on a fresh machine."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

pytestmark = [pytest.mark.peers]


async def test_demo_books_an_appointment_end_to_end(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "demo",
        cwd=tmp_path, env={**os.environ, "COLUMNS": "160"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 150)
    text = output.decode()
    assert process.returncode == 0, text
    assert "caller: I'd like to book a cleaning" in text
    assert "Appointment #1 as stored" in text and "David Miller" in text
    assert "+15550123456" in text and "cleaning" in text
    assert "Goodbye" in text and "offline mode" in text
