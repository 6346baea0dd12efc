"""`sipagent serve --workers K`, the pure parts: port plan, restart policy, status/metrics merge."""

from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sipagent.config import AgentSettings
from sipagent.workers.aggregate import WorkerView, merge_metrics, merge_status
from sipagent.workers.plan import plan_workers, worker_count, worker_environment
from sipagent.workers.restarts import RestartPolicy


def settings(**values: object) -> AgentSettings:
    return AgentSettings(_env_file=None, **values)  # type: ignore[call-arg]


# -- plan -----------------------------------------------------------------------------------


def test_worker_zero_keeps_the_configured_port_and_each_gets_its_rtp_slice():
    specs = plan_workers(
        settings(bind="0.0.0.0:5060", rtp_ports="20000-20999"), 3, status_ports=[9001, 9002, 9003]
    )
    assert [str(s.sip) for s in specs] == ["0.0.0.0:5060", "0.0.0.0:5061", "0.0.0.0:5062"]
    assert [s.rtp_ports for s in specs] == ["20000-20331", "20332-20663", "20664-20999"]
    assert [s.rtp_capacity for s in specs] == [166, 166, 168]  # the last takes the remainder
    assert [str(s.status) for s in specs] == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]


def test_rtp_slices_never_overlap_and_stay_inside_the_range():
    specs = plan_workers(settings(rtp_ports="20001-20100"), 4)
    ports = [set(range(s.rtp_first, s.rtp_last + 1)) for s in specs]
    for i, mine in enumerate(ports):
        assert all(not mine & other for other in ports[i + 1 :])
        assert min(mine) >= 20001 and max(mine) <= 20100
        assert min(mine) % 2 == 0  # starts on an even (RTP) port
    assert all(s.status is None for s in specs)  # no status ports: status off


def test_a_range_too_small_for_the_workers_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"too few for 3 workers.*widen --rtp-ports"):
        plan_workers(settings(rtp_ports="20000-20009"), 3)  # 5 even ports, 2 each needed
    assert len(plan_workers(settings(rtp_ports="20000-20011"), 3)) == 3  # 6: just enough


def test_sip_ports_must_fit():
    with pytest.raises(ValueError, match="past 65535"):
        plan_workers(settings(bind="127.0.0.1:65535"), 2)
    with pytest.raises(ValueError, match="at least 1"):
        plan_workers(settings(), 0)


def test_zero_workers_means_one_per_core():
    assert worker_count(0, 8) == 8
    assert worker_count(0, None) == 1
    assert worker_count(3, 8) == 3
    # A registrar forks every INVITE to all contacts: one process unless asked for more.
    assert worker_count(0, 8, registering=True) == 1
    assert worker_count(4, 8, registering=True) == 4


def test_a_worker_environment_carries_every_resolved_setting_and_its_own_share():
    resolved = settings(
        bind="[::1]:5070", app="receptionist", password="pw", max_calls=7, workers=4
    )
    [_, second] = plan_workers(resolved, 2, status_ports=[9001, 9002])
    env = worker_environment(resolved, second, base={"PATH": "/bin", "SIPAGENT_APP": "echo"})
    assert env["PATH"] == "/bin"
    assert env["SIPAGENT_APP"] == "receptionist"  # the supervisor's value wins
    assert env["SIPAGENT_PASSWORD"] == "pw" and env["SIPAGENT_MAX_CALLS"] == "7"
    assert env["SIPAGENT_BIND"] == "[::1]:5071"
    assert env["SIPAGENT_STATUS_BIND"] == "127.0.0.1:9002"
    assert env["SIPAGENT_WORKERS"] == "1"
    # ...and the worker reads back exactly that share.
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        child = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert child.bind_address.port == 5071 and child.rtp_ports == second.rtp_ports
    assert child.database_url == resolved.database_url and child.workers == 1
    assert child.password.get_secret_value() == "pw"


# -- restart policy ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_that_ran_a_while_comes_straight_back():
    clock = Clock()
    policy = RestartPolicy(clock=clock, fast_seconds=10)
    for _ in range(10):  # dies once an hour, forever: never given up on
        policy.started()
        clock.now += 3600
        decision = policy.exited()
        assert (decision.delay, decision.give_up) == (0.0, False)
    assert policy.restarts == 10


def test_fast_crashes_back_off_to_the_cap_then_give_up():
    clock = Clock()
    policy = RestartPolicy(
        clock=clock, first_delay=0.5, max_delay=3, fast_seconds=10, max_fast_crashes=5,
        window_seconds=120,
    )  # fmt: skip
    delays = []
    for _ in range(4):
        policy.started()
        clock.now += 1
        decision = policy.exited()
        assert not decision.give_up
        delays.append(decision.delay)
        clock.now += decision.delay
    assert delays == [0.5, 1.0, 2.0, 3.0]
    policy.started()
    clock.now += 1
    decision = policy.exited()
    assert decision.give_up and "5 crashes within 120 s" in decision.reason
    assert policy.restarts == 4


def test_fast_crashes_spread_beyond_the_window_are_not_a_crash_loop():
    clock = Clock()
    policy = RestartPolicy(clock=clock, fast_seconds=10, max_fast_crashes=3, window_seconds=60)
    for _ in range(6):
        policy.started()
        clock.now += 5
        assert not policy.exited().give_up
        clock.now += 40  # each crash 45 s after the previous: at most 2 in any 60 s


def test_a_long_run_resets_the_backoff():
    clock = Clock()
    policy = RestartPolicy(clock=clock, first_delay=0.5, fast_seconds=10)
    for _ in range(3):
        policy.started()
        clock.now += 1
        policy.exited()
    policy.started()
    clock.now += 100
    assert policy.exited().delay == 0.0
    policy.started()
    clock.now += 1
    assert policy.exited().delay == 0.5


# -- aggregation -------------------------------------------------------------------------------


def worker_status(calls: list[str], *, state: str = "peer-to-peer", turns_at: float = 0) -> dict:
    return {
        "agent": {"app": "echo", "sip": "x"},
        "registration": {"mode": "peer-to-peer", "state": state},
        "calls": [{"call_id": c, "caller": "+1555"} for c in calls],
        "recent_turns": [{"call_id": c, "at": turns_at} for c in calls],
        "barge_ins": {"total": 2, "false_alarms": 1, "recent": [{"call_id": "b", "ago_s": 1.0}]},
        "errors": {
            "provider": [{"stage": "tts", "message": "m"}],
            "provider_total": 1,
            "sip_malformed": {"bad_header": 2},
            "rtp_dropped": {"foreign_source": 3},
        },
        "totals": {"calls": 5, "calls_active": len(calls), "turns": 4},
    }


def test_status_sums_totals_and_lists_calls_with_their_worker():
    views = [
        WorkerView(0, 101, "running", 0, "127.0.0.1:5060", worker_status(["a"], turns_at=2)),
        WorkerView(1, 102, "running", 1, "127.0.0.1:5061", worker_status(["b", "c"], turns_at=1)),
        WorkerView(2, None, "restarting", 3, "127.0.0.1:5062"),
    ]
    merged = merge_status(views, app="echo", user="agent", started_at=100.0, now=160.0)
    assert merged["totals"] == {"calls": 10, "calls_active": 3, "turns": 8}
    assert [(c["call_id"], c["worker"]) for c in merged["calls"]] == [
        ("a", 0), ("b", 1), ("c", 1)
    ]  # fmt: skip
    assert [t["worker"] for t in merged["recent_turns"]] == [1, 1, 0]  # oldest first
    assert merged["barge_ins"]["total"] == 4 and merged["barge_ins"]["false_alarms"] == 2
    assert merged["errors"]["provider_total"] == 2
    assert merged["errors"]["sip_malformed"] == {"bad_header": 4}
    assert merged["errors"]["rtp_dropped"] == {"foreign_source": 6}
    assert merged["agent"]["uptime_s"] == 60.0 and merged["agent"]["workers_reporting"] == 2
    assert merged["agent"]["sip_socket"] == "degraded"
    workers = [
        (w["worker"], w["state"], w["reporting"], w["calls_active"]) for w in merged["workers"]
    ]
    assert workers == [
        (0, "running", True, 1),
        (1, "running", True, 2),
        (2, "restarting", False, 0),
    ]


def test_status_shows_the_registration_of_a_worker_in_trouble():
    views = [
        WorkerView(0, 1, "running", 0, "s0", worker_status([], state="registered")),
        WorkerView(1, 2, "running", 0, "s1", worker_status([], state="failed")),
    ]
    merged = merge_status(views, app="echo", user="agent", started_at=0, now=1)
    assert (merged["registration"]["state"], merged["registration"]["worker"]) == ("failed", 1)
    nobody = merge_status(
        [WorkerView(0, None, "restarting", 0, "s0")], app="echo", user="a", started_at=0, now=1
    )
    assert nobody["registration"]["state"] == "unknown" and nobody["totals"] == {}


def worker_metrics(calls: int, latency: float, state: str) -> str:
    registry = CollectorRegistry()
    Counter("sipagent_calls", "calls", registry=registry).inc(calls)
    Histogram("sipagent_answer_seconds", "answer", buckets=(0.1, 1.0), registry=registry).observe(
        latency
    )
    Gauge("sipagent_registration_state", "state", ["state"], registry=registry).labels(state).set(1)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_keep_every_workers_series_under_a_worker_label():
    views = [
        WorkerView(0, 1, "running", 0, "s0", metrics=worker_metrics(3, 0.05, "registered")),
        WorkerView(1, 2, "running", 2, "s1", metrics=worker_metrics(4, 0.5, "failed")),
        WorkerView(2, None, "restarting", 5, "s2"),
    ]
    body, content_type = merge_metrics(views)
    text = body.decode()
    got = samples(text)
    assert content_type.startswith("text/plain")
    assert got['sipagent_calls_total{worker="0"}'] == 3
    assert got['sipagent_calls_total{worker="1"}'] == 4
    assert got['sipagent_answer_seconds_bucket{le="0.1",worker="0"}'] == 1
    assert got['sipagent_answer_seconds_bucket{le="0.1",worker="1"}'] == 0
    assert got['sipagent_registration_state{state="failed",worker="1"}'] == 1
    assert [got[f'sipagent_worker_up{{worker="{i}"}}'] for i in range(3)] == [1, 1, 0]
    assert got['sipagent_worker_restarts_total{worker="2"}'] == 5
    assert text.count("# TYPE sipagent_calls_total counter") == 1  # one family, two workers
