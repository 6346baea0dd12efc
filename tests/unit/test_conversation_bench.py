"""The conversation latency benchmark's analysis (bench/conversation_bench), on made-up
captures: the inbound-path split, the percentiles and the report's tables."""

import pytest

from bench.conversation_bench.capture import FRAME_S, CallCapture, Packet, inbound_path
from bench.conversation_bench.report import markdown
from bench.conversation_bench.stats import first_in, ms, ok, pct

TARGET_DELAY_S = 0.040


def made_up_call(anchor_late_s: float, frames: int = 50) -> tuple[CallCapture, dict[int, float]]:
    """A caller stream every 20 ms; an agent that anchors its jitter buffer `anchor_late_s`
    after the first packet, hands each frame on at the first media tick at or after its due
    time, and whose STT gets it 0.3 ms after that tick."""
    caller_at = {n: 100.0 + n * FRAME_S for n in range(frames)}
    ticks = [100.007 + k * FRAME_S for k in range(frames + 10)]
    anchor = caller_at[0] + anchor_late_s
    fake: dict[int, float] = {}
    for n in range(frames):
        due = anchor + n * FRAME_S + TARGET_DELAY_S
        tick = next(t for t in ticks if t >= due)
        fake[n] = tick + 0.0003
    agent = [Packet(t, False, b"\xff" * 160, False) for t in ticks]
    return CallCapture(caller_at, 0, agent, {4000}), fake


def test_inbound_path_splits_each_frame_into_buffer_tick_wait_and_delivery():
    cap, fake = made_up_call(anchor_late_s=0.002)
    path, info = inbound_path(cap, fake, TARGET_DELAY_S)
    assert info["delivery"].startswith("after the playout delay")
    assert info["frames_fitting_the_playout_delay_model"] == "50/50"
    # The anchor is known only between two ticks; the 2 ms lateness lies within it.
    assert abs(info["estimated_anchor_minus_first_packet_ms"] - 2.0) <= (
        info["anchor_uncertainty_ms"] / 2 + 0.01
    )
    assert len(path["total"]) == len(path["buffer"]) == 50
    for total, buffer, wait, to_stt in zip(
        path["total"], path["buffer"], path["tick_wait"], path["to_stt"], strict=True
    ):
        assert buffer + wait + to_stt == pytest.approx(total)
        assert to_stt == pytest.approx(0.3)
        assert 0 <= wait < FRAME_S * 1000


def test_inbound_path_with_the_agents_own_anchor_uses_it():
    cap, fake = made_up_call(anchor_late_s=0.002)
    path, info = inbound_path(cap, fake, TARGET_DELAY_S, known=cap.caller_at[0] + 0.002)
    assert info["anchor_source"] == "agent record"
    assert info["agent_anchor_minus_first_packet_ms"] == pytest.approx(2.0)
    assert path["buffer"] == pytest.approx([42.0] * 50)


def test_an_agent_that_forwards_on_arrival_gets_only_the_total():
    cap, _ = made_up_call(anchor_late_s=0.0)
    fake = {n: at + 0.001 + (n % 7) * 0.003 for n, at in cap.caller_at.items()}
    path, info = inbound_path(cap, fake, TARGET_DELAY_S)
    assert info["delivery"].startswith("on arrival")
    assert len(path["total"]) == 50 and path["buffer"] == []


def test_percentiles_skip_missing_values_and_judge_against_targets():
    stats = pct([10.0, None, 20.0, 30.0])
    assert stats["n"] == 3 and stats["p50"] == 20.0 and stats["max"] == 30.0
    assert ok(stats, "p50", 20.0) is True and ok(stats, "max", 25.0) is False
    empty = pct([None])
    assert empty["n"] == 0 and ok(empty, "p50", 1.0) is None
    assert ms(1.0, 1.0125) == 12.5 and ms(None, 2.0) is None
    assert first_in([3.0, 1.5, 2.0], lambda x: x, 1.0, 2.5) == 1.5
    assert first_in([3.0], lambda x: x, 1.0, 2.5) is None


def test_the_report_shows_each_scenario_or_its_error():
    stats = pct([700.0, 710.0])
    report = {
        "results": {
            "v2v": {"scenario": "v2v", "error": "RuntimeError: agent died"},
            "barge-in": {
                "barge_ins_measured": 2,
                "barge_ins_planned": 2,
                "meets": {
                    "onset_to_silence_p50": True,
                    "decision_to_silence_p50": True,
                    "decision_to_silence_max": False,
                    "decision_to_first_silent_packet_p50": None,
                },
                "voiced_packets_after_decision_total": 0,
                "resumes": 0,
                **{
                    key: stats
                    for key in (
                        "onset_to_silence_ms",
                        "onset_to_first_silent_packet_ms",
                        "onset_to_pause_decision_ms",
                        "onset_to_interrupt_decision_ms",
                        "decision_to_silence_ms",
                        "decision_to_first_silent_packet_ms",
                        "decision_to_last_voiced_ms",
                        "onset_to_stt_onset_ms",
                        "onset_to_stt_first_words_ms",
                        "agent_recorded_interrupt_decision_to_last_voiced_ms",
                    )
                },
            },
        },
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "python": "3.11",
            "sipp": "SIPp",
            "loadavg_start": [0.1],
        },
        "command": "python bench/conversation_latency.py",
        "agent_commands": [],
        "anomalies": ["something odd"],
    }
    text = markdown(report)
    assert "v2v: ERROR RuntimeError: agent died" in text
    assert "### Barge-in (2/2 interruptions" in text
    assert "| 2 | 705.0 | 709.5 | 710.0 | <= 20 | p50 PASS, max FAIL |" in text
    assert text.endswith("anomalies:\n- something odd")
