"""Hostile SIP and RTP thrown at the agent while a call is up: dropped, call unharmed."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from test_agent_calls import assert_same_frames, recording

from sipagent.sip.call import CallState
from tests.kit.agentlib import running_agent, sipp_pattern_call, wait_until
from tests.kit.hostile_input import hostile_rtp_datagrams, hostile_sip_messages

pytestmark = [pytest.mark.peers]


async def blast(datagrams: list[bytes], destination: tuple[str, int]) -> int:
    """Send each datagram from a throwaway socket (some answers come back; they are read)."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for data in datagrams:
            try:
                sock.sendto(data, destination)
                sent += 1
            except OSError:
                pass  # > 65507 bytes cannot be sent as one UDP datagram: the kernel refuses
            await asyncio.sleep(0.002)
    return sent


async def test_hostile_input_during_a_call(sipp, audio_dir, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sipagent")
    record_dir = tmp_path / "rec"
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    async with running_agent(record_dir=record_dir) as agent:
        host, port = agent.local_address
        caller, call = await sipp_pattern_call(agent, sipp, audio_dir)
        sip_corpus = hostile_sip_messages()
        rtp_corpus = hostile_rtp_datagrams()
        await asyncio.gather(
            blast(sip_corpus, (host, port)), blast(rtp_corpus, ("127.0.0.1", call.rtp_port))
        )
        assert call.state == CallState.CONFIRMED, "the call in progress was disturbed"
        (await caller.wait()).check()
        await wait_until(lambda: not agent.calls, 5, "call ended")
        stats = call.rtp.stats
        # The call kept its audio: every frame SIPp streamed, in order, nothing injected.
        assert_same_frames(recording(record_dir), pattern)
        assert sum(stats.dropped.values()) >= 250, stats.dropped
        assert sum(agent.dropped.values()) >= 150, agent.dropped
        assert not agent.ended_calls[:-1], "a hostile message created a call"
        assert any("dropped malformed SIP" in r.getMessage() for r in caplog.records)
        # And a new call works afterwards.
        second = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": 1500})  # fmt: skip
        (await second.run()).check()
        await wait_until(lambda: len(agent.ended_calls) == 2, 5, "second call ended")
