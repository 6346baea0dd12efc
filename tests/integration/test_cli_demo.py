"""`sipagent demo` (the README's main job) as a user runs it: on its own throwaway database
(the user's stays untouched), then on a database given with --database-url, where the record
commands read what it stored."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.peers]


async def cli(cwd, *args: str, timeout: float = 30) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", *args,
        cwd=cwd, env={**os.environ, "COLUMNS": "200", "XDG_DATA_HOME": str(cwd / "user-data")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, output.decode()


async def test_demo_books_into_a_throwaway_database_then_into_the_one_given(tmp_path):
    # The user's database is the default one in their data dir (XDG_DATA_HOME here).
    user_database = tmp_path / "user-data" / "sipagent" / "sipagent.db"
    code, text = await cli(tmp_path, "demo", timeout=150)
    assert code == 0, text
    throwaway = re.search(r"booking into a throwaway database, sqlite:///(\S+)", text)
    assert throwaway, text
    assert not Path(throwaway.group(1)).exists()  # deleted afterwards
    assert not user_database.exists() and not (tmp_path / "sipagent.db").exists()
    assert "Appointment #1 as stored" in text and "David Miller" in text

    # Shown off on a real database: the same booking again (its slot is free there) ...
    shown_off = tmp_path / "shop.db"
    code, text = await cli(
        tmp_path, "demo", "--database-url", f"sqlite:///{shown_off}", timeout=150
    )
    assert code == 0, text
    assert f"booking into sqlite:///{shown_off}" in text
    assert "caller: I'd like to book a cleaning" in text
    assert "Appointment #1 as stored" in text and "David Miller" in text
    assert "+15550123456" in text and "cleaning" in text
    assert "Goodbye" in text and "offline mode" in text
    # ... where the record commands find it, and say where they looked.
    given = ("--database-url", f"sqlite:///{shown_off}")
    code, calls = await cli(tmp_path, "calls", "list", *given)
    assert code == 0 and "agent ended the call (offline)" in calls, calls
    assert f"database sqlite:///{shown_off}" in calls
    call_id = re.search(r"│ ([0-9a-f]{32}@127\.0\.0\.1)", calls).group(1)
    code, shown = await cli(tmp_path, "calls", "show", call_id[:12], *given)
    # Case as the recogniser writes it (Whisper capitalises, pocketsphinx does not).
    assert code == 0 and "i'd like to book a cleaning" in shown.lower(), shown
    assert "STT final" in shown, shown

    code, listed = await cli(tmp_path, "appointments", "list", *given)
    assert code == 0 and "David Miller" in listed and "booked" in listed, listed
    code, cancelled = await cli(tmp_path, "appointments", "cancel", "1", *given)
    assert code == 0 and "cancelled #1: David Miller" in cancelled, cancelled
    code, listed = await cli(tmp_path, "appointments", "list", *given)
    assert "David Miller" not in listed
    code, missing = await cli(tmp_path, "appointments", "cancel", "1", *given)
    assert code == 1 and "1" in missing, missing  # already cancelled: a clear error
