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
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from sipagent.observability import Redactor, stage_latencies, start_status_server
from sipagent.observability.status import StatusServer
from sipagent.sip.endpoint import SipEndpoint
from tests.kit.agentlib import running_agent, wait_until
from tests.kit.prometheus import metric

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
        # A call is listed from its 200 OK; its conversation starts at the caller's ACK.
        deadline = time.monotonic() + 5.0
        while True:
            [call] = (await get_status(server))["calls"]
            if call["state"] != "answered" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert call["state"] in ("listening", "thinking", "speaking")
        assert call["conversation"]["state"] == call["state"]

        (await runner.wait()).check()
        await wait_until(lambda: bool(agent.ended_calls), 10, "call end")
        ended = agent.ended_calls[0]
        session = agent.app.sessions[ended.call_id]
        # the metrics have folded the call's events as they came; refreshing the live figures
        # again and again (and scraping) must not count anything twice
        metrics = server.metrics
        for _ in range(3):
            metrics.refresh(agent, time.time() + 60)
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
