"""`sipagent monitor`'s frame: a pure rendering of a `/status` document."""

from __future__ import annotations

import copy

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sipagent.cli import monitor as monitor_module
from sipagent.cli.main import app
from sipagent.cli.monitor import render, status_url

NOW = 1_700_000_000.0

SAMPLE = {
    "agent": {
        "app": "receptionist",
        "sip": "127.0.0.1:5060",
        "user": "agent",
        "started_at": NOW - 3725,
        "uptime_s": 3725.0,
        "now": NOW,
    },
    "registration": {
        "mode": "registrar",
        "state": "registered",
        "reason": "",
        "registrar": "pbx.example:5060",
        "contact": "<sip:agent@10.0.0.5:5060>",
        "granted_expires": 300,
        "expires_in": 211.4,
        "last_status_code": 200,
        "successes": 3,
        "failures": 1,
    },
    "calls": [
        {
            "call_id": "abc123",
            "caller": "+15551234567",
            "sip_state": "confirmed",
            "state": "thinking",
            "started_at": NOW - 95,
            "answered_at": NOW - 94,
            "duration_s": 94.0,
            "media": {
                "codec": "PCMU",
                "packets_in": 4700,
                "packets_out": 4690,
                "jitter_ms": 12.34,
                "lost": 7,
                "late": 2,
                "expected": 4707,
                "loss_pct": 0.15,
                "dropped": {},
            },
            "conversation": {
                "state": "thinking",
                "turns": 6,
                "barge_ins": 1,
                "provider_errors": 1,
                "last_voice_to_voice_ms": 812.4,
                "recent_turns": [],
            },
        },
        {
            "call_id": "def456",
            "caller": "alice",
            "sip_state": "ringing",
            "state": "ringing",
            "started_at": NOW - 1,
            "answered_at": None,
            "duration_s": 1.0,
            "media": None,
            "conversation": None,
        },
    ],
    "recent_turns": [
        {
            "call_id": "abc123",
            "caller": "+15551234567",
            "index": 3,
            "role": "assistant",
            "at": NOW - 20,
            "interrupted": True,
            "latency_ms": {
                "stt_final": 310.0,
                "llm_first_token": 402.0,
                "tts_first_byte": 121.0,
                "first_packet": 38.0,
                "voice_to_voice": 871.0,
                "barge_in_onset_to_silence": 143.0,
            },
        },
        {
            "call_id": "abc123",
            "caller": "+15551234567",
            "index": 5,
            "role": "assistant",
            "at": NOW - 4,
            "interrupted": False,
            "latency_ms": {
                "stt_final": 288.0,
                "llm_first_token": 377.0,
                "tts_first_byte": 109.0,
                "first_packet": 38.4,
                "voice_to_voice": 812.4,
            },
        },
    ],
    "barge_ins": {
        "total": 1,
        "false_alarms": 2,
        "recent": [
            {"call_id": "abc123", "caller": "+15551234567", "ago_s": 20.0, "decision_ms": 350.0}
        ],
    },
    "errors": {
        "provider": [
            {
                "call_id": "abc123",
                "caller": "+15551234567",
                "stage": "tts",
                "message": "tts: ElevenLabs 429 Too Many Requests",
            }
        ],
        "provider_total": 1,
        "sip_malformed": {"bad CSeq": 3},
        "rtp_dropped": {"wrong payload type": 5},
    },
    "totals": {
        "calls": 12,
        "turns": 40,
        "barge_ins": 1,
        "barge_in_false_alarms": 2,
        "provider_errors": 1,
        "sip_malformed": 3,
        "rtp_packets_in": 90000,
        "rtp_packets_out": 89950,
        "jitter_lost": 7,
        "jitter_late": 2,
        "registration_failures": 1,
        "calls_active": 2,
    },
}


def frame_text(status: dict, **kwargs) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(status, **kwargs))
    return console.export_text()


def test_frame_shows_calls_states_and_latencies():
    text = frame_text(SAMPLE)
    # the active calls table: caller, duration, conversation state, last voice-to-voice, jitter
    call_row = next(line for line in text.splitlines() if "+15551234567" in line)
    assert "1:34" in call_row and "thinking" in call_row
    assert "812 ms" in call_row and "12.3 ms" in call_row and "0.1%" in call_row
    assert "4700/4690" in call_row
    ringing_row = next(line for line in text.splitlines() if "alice" in line)
    assert "ringing" in ringing_row
    # recent turns, newest first, with each stage's latency
    turn_rows = [line for line in text.splitlines() if "s ago" in line and "+1555" in line]
    assert "4s ago" in turn_rows[0] and "871 ms" in turn_rows[1]
    for number in ("288", "377", "109", "38", "812 ms"):
        assert number in turn_rows[0]
    assert "143 ms" in turn_rows[1] and "interrupted" in turn_rows[1]
    # registration, totals, barge-ins, errors
    assert "registered" in text and "pbx.example:5060" in text and "211 s" in text
    assert "1:02:05" in text  # uptime
    assert "2 active / 12 total" in text
    assert "1 interrupted, 2 false alarms" in text and "decided in 350 ms" in text
    assert "ElevenLabs 429" in text and "malformed SIP: bad CSeq: 3" in text
    assert "dropped RTP: wrong payload type: 5" in text


def test_frame_of_an_idle_peer_to_peer_agent():
    status = copy.deepcopy(SAMPLE)
    status.update(
        registration={"mode": "peer-to-peer", "state": "peer-to-peer", "reason": ""},
        calls=[],
        recent_turns=[],
        errors={"provider": [], "sip_malformed": {}, "rtp_dropped": {}},
    )
    text = frame_text(status)
    assert "peer-to-peer" in text and "no calls" in text and "none yet" in text
    assert "no errors" in text


def test_frame_tolerates_a_sparse_document_and_shows_a_problem_banner():
    text = frame_text({"calls": [{"caller": "bob"}]}, problem="agent unreachable; retrying")
    assert "agent unreachable" in text and "bob" in text


def test_failed_registration_shows_its_reason():
    status = copy.deepcopy(SAMPLE)
    status["registration"].update(
        state="failed", reason="403 Forbidden: wrong password", expires_in=None
    )
    text = frame_text(status)
    assert "failed" in text and "403 Forbidden: wrong password" in text


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8089", "http://127.0.0.1:8089/status"),
        ("http://127.0.0.1:8089/", "http://127.0.0.1:8089/status"),
        ("http://127.0.0.1:8089/status", "http://127.0.0.1:8089/status"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/status"),
    ],
)
def test_status_url(given, expected):
    assert status_url(given) == expected


def test_every_table_column_has_a_label():
    text = frame_text(SAMPLE)
    assert "Barge-in" in text  # the turns table's interrupted column


def test_live_mode_prints_one_labelled_line_per_change_when_piped(monkeypatch):
    documents = [SAMPLE, SAMPLE, {**SAMPLE, "totals": {**SAMPLE["totals"], "turns": 41}}]
    fetches = iter(documents)
    monkeypatch.setattr(monitor_module, "fetch_status", lambda url: next(fetches))
    sleeps = iter(range(len(documents)))

    def sleep(_seconds):
        if next(sleeps) == len(documents) - 1:
            raise KeyboardInterrupt  # Ctrl-C after the last document

    monkeypatch.setattr(monitor_module.time, "sleep", sleep)
    result = CliRunner().invoke(app, ["monitor", "--url", "127.0.0.1:1"])  # not a terminal
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2  # the repeated document printed nothing
    assert lines[0].endswith(
        "registration=registered calls_active=2 calls_total=12 "
        "call_states=+15551234567:thinking,alice:ringing turns=40 last_voice_to_voice_ms=812 "
        "barge_ins=1 provider_errors=1 malformed_sip=3"
    )
    assert "turns=41" in lines[1]
