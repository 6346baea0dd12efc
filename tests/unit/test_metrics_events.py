"""AgentMetrics from a scripted event sequence: no endpoint, no sockets, no clock.

Events are folded exactly once as they come; the live figures (active calls, RTP of calls in
progress, SIP drops) are read at refresh, any number of times, without counting twice."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from sipagent.config import AgentSettings, parse_host_port
from sipagent.conversation.barge_in import BargeInAction
from sipagent.conversation.turns import Turn, TurnTimings
from sipagent.observability.events import (
    BargeIn,
    CallAnswered,
    CallEnded,
    CallStarted,
    EventBus,
    ProviderFailure,
    ProviderStage,
    TurnCompleted,
)
from sipagent.observability.metrics import AgentMetrics
from sipagent.observability.status import StatusServer
from sipagent.sip.call import CallState
from tests.kit.prometheus import metric


def fake_stats(packets_in: int, packets_out: int, lost: int = 0, late: int = 0) -> Any:
    jitter = SimpleNamespace(lost=lost, late=late, jitter_ms=4.0, expected=packets_in + lost)
    return SimpleNamespace(
        packets_in=packets_in, packets_out=packets_out, dropped={"bad version": 1}, jitter=jitter
    )


def fake_endpoint(*calls: Any) -> Any:
    session = SimpleNamespace(state="speaking")
    return SimpleNamespace(
        calls={call.call_id: call for call in calls}, dropped=Counter({"bad CSeq": 2}),
        registration=None, app=SimpleNamespace(sessions={c.call_id: session for c in calls}),
    )  # fmt: skip


def live_call(call_id: str, stats: Any) -> Any:
    return SimpleNamespace(
        call_id=call_id, state=CallState.CONFIRMED, rtp=SimpleNamespace(stats=stats)
    )


def counts(metrics: AgentMetrics) -> dict[str, float]:
    text = metrics.exposition()[0].decode()
    stages = ("stt_final", "llm_first_token", "voice_to_voice", "barge_in_onset_to_silence")
    values = {
        stage: metric(text, "sipagent_turn_latency_seconds_count", stage=stage) for stage in stages
    }
    values["calls"] = metric(text, "sipagent_calls_total")
    values["active"] = metric(text, "sipagent_calls_active")
    values["speaking"] = metric(text, "sipagent_conversations", state="speaking")
    values["answers"] = metric(text, "sipagent_answer_seconds_count")
    values["durations"] = metric(text, "sipagent_call_duration_seconds_count")
    values["rtp_in"] = metric(text, "sipagent_rtp_packets_total", direction="in")
    values["rtp_out"] = metric(text, "sipagent_rtp_packets_total", direction="out")
    values["lost"] = metric(text, "sipagent_jitter_buffer_lost_total")
    values["jitter_worst"] = metric(text, "sipagent_rtp_jitter_worst_seconds")
    values["barge_ins"] = metric(text, "sipagent_barge_ins_total")
    values["false_alarms"] = metric(text, "sipagent_barge_in_false_alarms_total")
    values["tts_errors"] = metric(text, "sipagent_provider_errors_total", stage="tts")
    values["fallback_errors"] = metric(text, "sipagent_provider_errors_total", stage="fallback_tts")
    values["malformed"] = metric(text, "sipagent_sip_malformed_total", kind="bad CSeq")
    values["rtp_dropped"] = metric(text, "sipagent_rtp_dropped_total", reason="bad version")
    return values


def test_a_scripted_call_is_folded_exactly_once():
    metrics = AgentMetrics()
    bus = EventBus()
    metrics.attach(bus)
    call = live_call("c1", fake_stats(100, 90))
    endpoint = fake_endpoint(call)

    bus.emit(CallStarted("c1", "alice"))
    bus.emit(CallAnswered("c1", 0.01))
    exchange = TurnTimings(caller_speech_end=1.0, stt_final=1.3, llm_first_token=1.7,
                           tts_first_byte=1.8, first_reply_packet=1.85)  # fmt: skip
    bus.emit(TurnCompleted("c1", 0, Turn("user", "hello", timings=exchange)))
    metrics.refresh(endpoint)
    first = counts(metrics)
    # the caller's turn counts its STT stage only; the reply's stages come with the reply
    assert first["stt_final"] == 1 and first["voice_to_voice"] == 0
    assert (first["calls"], first["active"], first["speaking"], first["answers"]) == (1, 1, 1, 1)
    assert (first["rtp_in"], first["rtp_out"], first["malformed"]) == (100, 90, 2)
    assert first["jitter_worst"] == 0.004

    for event in (
        BargeIn("c1", BargeInAction.PAUSE, 2.0, 1.9),
        BargeIn("c1", BargeInAction.RESUME, 2.9),
        BargeIn("c1", BargeInAction.PAUSE, 3.0, 2.9),
        BargeIn("c1", BargeInAction.INTERRUPT, 3.3, 2.9),
        ProviderFailure("c1", ProviderStage.TTS, "ElevenLabs 500"),
        TurnCompleted("c1", 1, Turn("assistant", "hi there", timings=exchange)),
    ):
        bus.emit(event)
    call.rtp.stats = fake_stats(150, 140, lost=3)
    endpoint.dropped["bad CSeq"] += 1
    for _ in range(5):  # scrapes read the live figures again and again
        metrics.refresh(endpoint)
    second = counts(metrics)
    assert second["stt_final"] == 1 and second["voice_to_voice"] == 1
    assert second["llm_first_token"] == 1
    assert (second["barge_ins"], second["false_alarms"], second["tts_errors"]) == (1, 1, 1)
    assert second["fallback_errors"] == 0
    assert (second["rtp_in"], second["lost"], second["malformed"]) == (150, 3, 3)
    assert second["rtp_dropped"] == 1 and second["calls"] == 1

    # the call ends: it leaves the endpoint's calls at once, its final stats come with CallEnded
    interrupted = TurnTimings(barge_in_onset=5.0, barge_in_decision=5.3, last_voiced_packet=5.1)
    bus.emit(TurnCompleted("c1", 2, Turn("assistant", "so", interrupted=True, timings=interrupted)))
    del endpoint.calls["c1"]
    metrics.refresh(endpoint)
    bus.emit(CallEnded("c1", "caller hung up", 42.0, fake_stats(160, 150, lost=3)))
    for _ in range(3):
        metrics.refresh(endpoint)
    third = counts(metrics)
    assert third["barge_in_onset_to_silence"] == 1 and third["voice_to_voice"] == 1
    assert (third["calls"], third["active"], third["speaking"], third["durations"]) == (1, 0, 0, 1)
    assert (third["rtp_in"], third["rtp_out"], third["jitter_worst"]) == (160, 150, 0)
    assert metrics.totals["turns"] == 3 and metrics.totals["provider_errors"] == 1
    assert not metrics._live_media  # nothing is kept for a call that ended


def test_a_call_never_seen_live_counts_its_whole_media_at_its_end():
    metrics = AgentMetrics()
    metrics.observe(CallStarted("c1", "alice"))
    metrics.observe(CallEnded("c1", "caller hung up", None, fake_stats(80, 70, lost=2)))
    # answered, never ACKed: no media, no duration
    metrics.observe(CallStarted("c2", "bob"))
    metrics.observe(CallEnded("c2", "no ACK", 3.0, None))
    metrics.refresh(fake_endpoint())
    values = counts(metrics)
    assert (values["calls"], values["rtp_in"], values["rtp_out"], values["lost"]) == (2, 80, 70, 2)
    assert values["durations"] == 1


def test_a_live_counter_that_went_backwards_was_reset_at_the_source():
    metrics = AgentMetrics()
    call = live_call("c1", fake_stats(100, 90))
    endpoint = fake_endpoint(call)
    metrics.refresh(endpoint)
    call.rtp.stats = fake_stats(5, 4)  # e.g. a new media session after a re-INVITE
    metrics.refresh(endpoint)
    assert counts(metrics)["rtp_in"] == 105


def test_detached_metrics_stop_counting():
    metrics = AgentMetrics()
    bus = EventBus()
    detach = metrics.attach(bus)
    bus.emit(CallStarted("c1", "alice"))
    detach()
    bus.emit(CallStarted("c2", "alice"))
    assert metrics.totals["calls"] == 1


async def test_the_status_server_counts_from_its_construction_until_it_stops():
    bus = EventBus()
    endpoint = SimpleNamespace(events=bus, settings=AgentSettings(_env_file=None))  # type: ignore[call-arg]
    server = StatusServer(endpoint, parse_host_port("127.0.0.1:8089", 8089))  # type: ignore[arg-type]
    bus.emit(CallStarted("c1", "alice"))  # never started: counting needs no socket
    await server.stop()
    bus.emit(CallStarted("c2", "alice"))
    assert server.metrics.totals["calls"] == 1
