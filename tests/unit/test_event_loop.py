"""The event loop choice (--loop / SIPAGENT_EVENT_LOOP): asyncio, uvloop, or auto."""

from __future__ import annotations

import asyncio
import sys

import pytest

from sipagent.agent import loop_factory, run_on_loop


async def _loop_and_time_steps() -> tuple[asyncio.AbstractEventLoop, list[float]]:
    loop = asyncio.get_running_loop()
    # Distinct readings a few microseconds apart: a millisecond clock repeats itself here.
    readings = {loop.time() for _ in range(2000)}
    await asyncio.sleep(0.001)
    return loop, sorted(readings)


def test_asyncio_is_asyncios_own_loop() -> None:
    assert loop_factory("asyncio") is None
    loop, _ = run_on_loop("asyncio", _loop_and_time_steps)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_uvloop_missing_is_a_clear_error_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install"):
        loop_factory("uvloop")
    assert loop_factory("auto") is None
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        loop_factory("trio")


def test_uvloop_runs_with_a_fine_grained_clock() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
    assert loop_factory("auto") is not None
    loop, readings = run_on_loop("uvloop", _loop_and_time_steps)
    assert isinstance(loop, uvloop.Loop)
    # uvloop's own loop.time() counts whole milliseconds; ours reads time.monotonic().
    assert len(readings) > 10
    assert any(reading * 1000 % 1 > 1e-6 for reading in readings)
