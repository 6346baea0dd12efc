"""bench/capacity.py's paired comparison (`--pair`): what it runs, from its options alone."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def capacity() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the script imports its siblings (benchlib, media_timing)
    try:
        import capacity as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_pair_runs_two_single_worker_agents_b_with_the_setting(capacity: ModuleType) -> None:
    args = capacity.parse_args(
        ["--calls", "100", "--pair", "SIPAGENT_MEDIA_THREAD=false", "--pair", "SIPAGENT_X=a=b"]
    )
    assert args.pair == {"SIPAGENT_MEDIA_THREAD": "false", "SIPAGENT_X": "a=b"}
    assert args.workers == 2  # two SIP ports; the calls split over them
    assert capacity.split_calls(100, args.workers) == [50, 50]


@pytest.mark.parametrize(
    "argv",
    [
        ["--pair", "MEDIA_THREAD=false"],  # not a setting's environment name
        ["--pair", "SIPAGENT_MEDIA_THREAD"],  # no value
        ["--pair", "SIPAGENT_MEDIA_THREAD=false", "--workers", "4"],
        ["--pair", "SIPAGENT_MEDIA_THREAD=false", "--profile"],
    ],
)
def test_pair_refuses_what_it_cannot_run(capacity: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        capacity.parse_args(argv)


def test_each_agent_of_a_pair_gets_half_of_the_rtp_range(capacity: ModuleType) -> None:
    assert capacity.split_port_range("24000-25999", 2) == ["24000-24999", "25000-25999"]
    assert capacity.split_port_range("24000-25999", 1) == ["24000-25999"]
