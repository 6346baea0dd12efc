"""The status server (`/status`, `/metrics`) and `sipagent monitor` against a running agent.

The agent runs in-process (agentlib); its status server is started next to the endpoint the
way `run_agent` does. Real calls come from SIPp; the HTTP client is a raw asyncio one, since
the server lives on this test's event loop (a blocking client would deadlock it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipagent.conversation.barge_in import BargeInAction, BargeInEvent
from sipagent.conversation.turns import Turn, TurnTimings
from sipagent.observability import AgentMetrics, Redactor, stage_latencies, start_status_server
from sipagent.observability.status import StatusServer
from sipagent.sip.call import CallState
from sipagent.sip.endpoint import SipEndpoint
from tests.kit.agentlib import running_agent, wait_until

# -- helpers ---------------------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def http_get(
    url: str, *, host: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = (
        f"{method} {parts.path or '/'} HTTP/1.1\r\nHost: {host or parts.netloc}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def get_status(server: StatusServer) -> dict[str, Any]:
    code, headers, body = await http_get(f"{server.url}/status")
    assert code == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


async def get_metrics(server: StatusServer) -> str:
    code, headers, body = await http_get(f"{server.url}/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (sample name as exposed, e.g. ..._total)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name}{labels or ''} not in the exposition")


@contextlib.asynccontextmanager
async def agent_with_status(**overrides: Any) -> AsyncIterator[tuple[SipEndpoint, StatusServer]]:
    async with running_agent(status_bind=f"127.0.0.1:{free_tcp_port()}", **overrides) as agent:
        server = await start_status_server(agent, agent.settings.status_bind)
        assert server is not None
        try:
            yield agent, server
        finally:
            await server.stop()


async def run_monitor(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", "monitor", *args,
        env={**os.environ, "COLUMNS": "160", "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


# -- without peers ---------------------------------------------------------------------------


async def test_idle_agent_status_and_metrics():
    async with agent_with_status(app="echo", password="pw-never-shown") as (agent, server):
        status = await get_status(server)
        assert status["registration"] == {"mode": "peer-to-peer", "state": "peer-to-peer",
                                          "reason": ""}  # fmt: skip
        assert status["calls"] == [] and status["totals"]["calls"] == 0
        assert status["agent"]["sip"] == "{}:{}".format(*agent.local_address)
        text = await get_metrics(server)
        assert metric(text, "sipagent_calls_active") == 0
        assert metric(text, "sipagent_calls_total") == 0
        assert metric(text, "sipagent_registration_state", state="peer-to-peer") == 1
        assert metric(text, "sipagent_registration_state", state="registered") == 0
        assert metric(text, "sipagent_provider_errors_total", stage="llm") == 0
        assert metric(text, "sipagent_turn_latency_seconds_count", stage="voice_to_voice") == 0
        assert "pw-never-shown" not in text and "pw-never-shown" not in json.dumps(status)


async def test_http_edges():
    async with agent_with_status(app="echo") as (_, server):
        assert (await http_get(f"{server.url}/nope"))[0] == 404
        assert (await http_get(f"{server.url}/status", method="POST"))[0] == 405
        code, _, body = await http_get(f"{server.url}/status", method="HEAD")
        assert code == 200 and body == b""
        # bound to loopback: a page on another origin cannot read it through DNS rebinding
        assert (await http_get(f"{server.url}/status", host="evil.example:8089"))[0] == 403
        assert (await http_get(f"{server.url}/status", host="localhost"))[0] == 200
        # a client that never finishes its request does not block the others
        _, idle = await asyncio.open_connection(*server.address)
        try:
            assert (await http_get(f"{server.url}/metrics"))[0] == 200
        finally:
            idle.close()


async def test_status_server_disabled_or_port_taken():
    async with running_agent(app="echo") as agent:
        assert await start_status_server(agent, "") is None
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            # logged, not raised: the agent keeps answering calls without its status page
            assert await start_status_server(agent, f"127.0.0.1:{port}") is None


async def test_monitor_exits_2_when_the_agent_is_unreachable():
    code, output = await run_monitor("--once", "--url", f"http://127.0.0.1:{free_tcp_port()}")
    assert code == 2, output
    assert "cannot reach the agent's status endpoint" in output
    assert "--status-bind" in output


def test_redactor_hides_configured_and_well_known_secrets():
    redact = Redactor(["hunter2-secret"])
    text = redact(
        "tts: 401 for key hunter2-secret; Authorization: Bearer abcdefghijklmnop; "
        "api_key=xyz123456; sk-proj-ABCDEFGHIJKLMNOP"
    )
    for secret in ("hunter2-secret", "abcdefghijklmnop", "xyz123456", "ABCDEFGHIJKLMNOP"):
        assert secret not in text
    assert text.startswith("tts: 401 for key [redacted]")


# -- folding exactly once (fake endpoint state, real data classes) ---------------------------


def fake_stats(packets_in: int, packets_out: int, lost: int = 0, late: int = 0) -> Any:
    jitter = SimpleNamespace(lost=lost, late=late, jitter_ms=4.0, expected=packets_in + lost)
    return SimpleNamespace(
        packets_in=packets_in, packets_out=packets_out, dropped={"bad version": 1}, jitter=jitter
    )


def fake_call(call_id: str, now: float) -> Any:
    return SimpleNamespace(
        call_id=call_id, caller="alice", state=CallState.CONFIRMED, started_at=now - 10,
        answered_at=now - 9, ended_at=None, media=SimpleNamespace(codec="PCMU"),
        rtp=SimpleNamespace(stats=fake_stats(100, 90)),
    )  # fmt: skip


def counts(metrics: AgentMetrics) -> dict[str, float]:
    text = metrics.exposition()[0].decode()
    stages = ("stt_final", "llm_first_token", "voice_to_voice", "barge_in_onset_to_silence")
    values = {
        stage: metric(text, "sipagent_turn_latency_seconds_count", stage=stage) for stage in stages
    }
    values["calls"] = metric(text, "sipagent_calls_total")
    values["active"] = metric(text, "sipagent_calls_active")
    values["rtp_in"] = metric(text, "sipagent_rtp_packets_total", direction="in")
    values["lost"] = metric(text, "sipagent_jitter_buffer_lost_total")
    values["barge_ins"] = metric(text, "sipagent_barge_ins_total")
    values["false_alarms"] = metric(text, "sipagent_barge_in_false_alarms_total")
    values["tts_errors"] = metric(text, "sipagent_provider_errors_total", stage="tts")
    values["malformed"] = metric(text, "sipagent_sip_malformed_total", kind="bad CSeq")
    values["rtp_dropped"] = metric(text, "sipagent_rtp_dropped_total", reason="bad version")
    return values


def test_polling_folds_each_call_turn_and_event_exactly_once():
    now = 1_000.0
    call = fake_call("c1", now)
    session = SimpleNamespace(state="speaking", turns=[], barge_in_events=[], provider_errors=[])
    endpoint = SimpleNamespace(
        calls={"c1": call}, ended_calls=[], dropped=Counter({"bad CSeq": 2}), registration=None,
        answer_times=[0.01], app=SimpleNamespace(sessions={"c1": session}),
    )  # fmt: skip
    metrics = AgentMetrics(settle_seconds=2.0, finish_after=10.0)

    exchange = TurnTimings(caller_speech_end=1.0, stt_final=1.3, llm_first_token=1.7,
                           tts_first_byte=1.8, first_reply_packet=1.85)  # fmt: skip
    session.turns.append(Turn("user", "hello", timings=exchange, at=now))
    session.turns.append(Turn("assistant", "hi there", timings=exchange, at=now))
    metrics.poll(endpoint, now)
    first = counts(metrics)
    # the caller's turn is folded at once; the reply waits to settle (its first-packet stamp
    # may still be on its way)
    assert first["stt_final"] == 1 and first["voice_to_voice"] == 0
    assert (first["calls"], first["active"], first["rtp_in"], first["malformed"]) == (1, 1, 100, 2)

    session.barge_in_events += [BargeInEvent(BargeInAction.PAUSE, 2.0, 1.9),
                                BargeInEvent(BargeInAction.RESUME, 2.9),
                                BargeInEvent(BargeInAction.PAUSE, 3.0, 2.9),
                                BargeInEvent(BargeInAction.INTERRUPT, 3.3, 2.9)]  # fmt: skip
    session.provider_errors.append("tts: ElevenLabs 500")
    call.rtp.stats = fake_stats(150, 140, lost=3)
    endpoint.dropped["bad CSeq"] += 1
    for tick in range(5):  # many polls, and the reply settles on the way
        metrics.poll(endpoint, now + 1 + tick)
    second = counts(metrics)
    assert second["stt_final"] == 1 and second["voice_to_voice"] == 1
    assert second["llm_first_token"] == 1
    assert (second["barge_ins"], second["false_alarms"], second["tts_errors"]) == (1, 1, 1)
    assert (second["rtp_in"], second["lost"], second["malformed"]) == (150, 3, 3)
    assert second["rtp_dropped"] == 1 and second["calls"] == 1

    # the call ends; a last interrupted reply lands and is folded when the call is finished
    interrupted = TurnTimings(barge_in_onset=5.0, barge_in_decision=5.3, last_voiced_packet=5.1)
    session.turns.append(Turn("assistant", "so", interrupted=True, timings=interrupted, at=now + 6))
    call.state, call.ended_at = CallState.ENDED, now + 6
    call.rtp.stats = fake_stats(160, 150, lost=3)
    del endpoint.calls["c1"]
    endpoint.ended_calls.append(call)
    metrics.poll(endpoint, now + 6.5)
    assert counts(metrics)["barge_in_onset_to_silence"] == 0  # not settled yet
    for tick in range(5):
        metrics.poll(endpoint, now + 20 + tick)
    third = counts(metrics)
    assert third["barge_in_onset_to_silence"] == 1 and third["voice_to_voice"] == 1
    assert (third["calls"], third["active"], third["rtp_in"]) == (1, 0, 160)
    assert metrics.totals["turns"] == 3
    # once the endpoint forgets the call, so does the bookkeeping, and nothing changes
    endpoint.ended_calls.clear()
    metrics.poll(endpoint, now + 30)
    assert counts(metrics) == third and not metrics._calls


# -- real calls --------------------------------------------------------------------------------


@pytest.mark.peers
async def test_sipp_call_seen_by_status_metrics_and_monitor(sipp, audio_dir):
    pattern = audio_dir / "pattern.ulaw"
    async with agent_with_status(app="echo") as (agent, server):
        host, port = agent.local_address
        caller = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": pattern, "HOLD_MS": 6000})  # fmt: skip
        await caller.start(wait_bound=False)
        await wait_until(
            lambda: any(
                c.rtp is not None and c.rtp.stats.packets_in > 20
                for c in agent.calls.values()
            ),
            10, "the call's media flowing",
        )  # fmt: skip

        text = await get_metrics(server)
        assert metric(text, "sipagent_calls_active") == 1
        assert metric(text, "sipagent_calls_total") == 1
        assert metric(text, "sipagent_rtp_packets_total", direction="in") > 0
        assert metric(text, "sipagent_rtp_packets_total", direction="out") > 0

        status = await get_status(server)
        [call] = status["calls"]
        assert call["caller"] == "caller" and call["state"] == "confirmed"
        assert call["media"]["packets_in"] > 0 and call["media"]["codec"] == "PCMU"
        assert call["conversation"] is None  # the echo app has no conversation

        code, output = await run_monitor("--once", "--url", server.url)
        assert code == 0, output
        assert "caller" in output and "confirmed" in output and "Active calls" in output

        (await caller.wait()).check()
        await wait_until(lambda: not agent.calls and bool(agent.ended_calls), 5, "call end")
        text = await get_metrics(server)
        assert metric(text, "sipagent_calls_total") == 1
        assert metric(text, "sipagent_calls_active") == 0
        assert metric(text, "sipagent_call_duration_seconds_count") == 1
        assert metric(text, "sipagent_answer_seconds_count") == 1
        assert (await get_status(server))["calls"] == []


@pytest.mark.peers
async def test_receptionist_turn_latencies_are_folded_once(sipp, tmp_path):
    from test_offline_call import caller_pcap

    script = [(2.0, "I'd like to book a cleaning for next Tuesday at three pm.")]
    pcap, seconds = caller_pcap(tmp_path / "caller.pcap", script, tail=8.0)
    async with agent_with_status(app="receptionist", stt="offline", llm="offline", tts="offline",
                                 idle_reprompt_seconds=30.0) as (agent, server):  # fmt: skip
        host, port = agent.local_address
        hold_ms = int(seconds * 1000)
        runner = sipp("uac_dtmf.xml", remote=f"{host}:{port}", service="agent",
                      timeout=seconds + 20,
                      params={"DTMF_PCAP": pcap, "PRE_MS": 0, "HOLD_MS": hold_ms})  # fmt: skip
        await runner.start(wait_bound=False)
        await wait_until(lambda: bool(agent.calls), 10, "the call")
        status = await get_status(server)
        [call] = status["calls"]
        assert call["state"] in ("listening", "thinking", "speaking")
        assert call["conversation"]["state"] == call["state"]

        (await runner.wait()).check()
        await wait_until(lambda: bool(agent.ended_calls), 10, "call end")
        ended = agent.ended_calls[0]
        session = agent.app.sessions[ended.call_id]
        # the server's own poller has been folding all along; now make the call "finished"
        # (as 10 s after hang-up) and poll again and again: nothing may be counted twice
        metrics = server.metrics
        for _ in range(3):
            metrics.poll(agent, time.time() + 60)
        text = await get_metrics(server)

        replies = [t for t in session.turns if t.role == "assistant"]
        callers = [t for t in session.turns if t.role == "user"]
        assert callers and len(replies) >= 2, [(t.role, t.text) for t in session.turns]
        expected_v2v = sum("voice_to_voice" in stage_latencies(t.timings) for t in replies)
        expected_stt = sum("stt_final" in stage_latencies(t.timings) for t in callers)
        assert expected_v2v >= 1 and expected_stt >= 1
        count = "sipagent_turn_latency_seconds_count"
        assert metric(text, count, stage="voice_to_voice") == expected_v2v
        assert metric(text, count, stage="stt_final") == expected_stt
        assert metric(text, "sipagent_turns_total", role="assistant") == len(replies)
        assert metric(text, "sipagent_turns_total", role="user") == len(callers)
        v2v_sum = metric(text, "sipagent_turn_latency_seconds_sum", stage="voice_to_voice")
        assert 0 < v2v_sum / expected_v2v < 10

        status = await get_status(server)
        turns = [t for t in status["recent_turns"] if t["call_id"] == ended.call_id]
        assert any("voice_to_voice" in t["latency_ms"] for t in turns)
        assert "book a cleaning" not in json.dumps(status)  # no transcripts leave the agent
