"""The agent's realtime scheduling option (`--realtime-priority`)."""

from __future__ import annotations

import logging
import os

import pytest

from sipagent import agent


def test_zero_leaves_the_scheduling_alone(monkeypatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda *args: calls.append(args))
    assert agent.apply_realtime_priority(0) is False
    assert calls == []


def test_without_the_privilege_the_agent_runs_on_and_says_why(monkeypatch, caplog) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger=agent.log.name):
        assert agent.apply_realtime_priority(10) is False
    assert "realtime priority 10 refused" in caplog.text
    assert "needs root or CAP_SYS_NICE" in caplog.text


def test_the_priority_is_asked_for_under_sched_rr(monkeypatch) -> None:
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        os,
        "sched_setscheduler",
        lambda pid, policy, param: calls.append((pid, policy, param.sched_priority)),
    )
    assert agent.apply_realtime_priority(12) is True
    assert calls == [(0, os.SCHED_RR, 12)]  # 0: the calling thread; later threads inherit it


def test_the_setting_is_bounded() -> None:
    from pydantic import ValidationError

    from sipagent.config import AgentSettings

    with pytest.raises(ValidationError):
        AgentSettings(_env_file=None, realtime_priority=100)  # type: ignore[call-arg]
