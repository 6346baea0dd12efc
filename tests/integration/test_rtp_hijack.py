"""An RTP hijack attempt during a real SIPp call (issue 9): refused, counted, nothing injected."""

from __future__ import annotations

import asyncio
import socket

import pytest
from test_agent_calls import assert_same_frames, recording

from sipagent.media.rtp import RtpPacket, build_rtp
from tests.kit.agentlib import running_agent, sipp_pattern_call, wait_until

pytestmark = [pytest.mark.peers]

ATTACK = b"\x42" * 160  # what the attacker would inject (never in the pattern)


async def test_a_hijack_attempt_during_a_call_is_refused_and_counted(sipp, audio_dir, tmp_path):
    record_dir = tmp_path / "rec"
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    # Linux routes all of 127.0.0.0/8 on lo: 127.0.0.2 is another host as far as the agent knows.
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.2", 0))
    attacker.setblocking(False)
    async with running_agent(record_dir=record_dir) as agent:
        caller, call = await sipp_pattern_call(agent, sipp, audio_dir)
        await wait_until(lambda: call.rtp.stats.packets_in >= 25, 5, "the caller's stream")
        sent = 0
        for _ in range(5):  # bursts of a well-formed stream of its own, while the caller talks
            for _ in range(100):
                packet = RtpPacket(0, sent, sent * 160, 0xBAD, sent == 0, ATTACK)
                attacker.sendto(build_rtp(packet), ("127.0.0.1", call.rtp_port))
                sent += 1
            await asyncio.sleep(0.2)
        (await caller.wait()).check()
        await wait_until(lambda: not agent.calls, 5, "call ended")
    stats = call.rtp.stats
    assert stats.dropped["rejected_foreign_source"] == sent
    assert stats.send_address == ("127.0.0.1", caller.media_port)
    assert stats.relatches == 0
    with pytest.raises(BlockingIOError):
        attacker.recv(2048)  # not one packet of the call went to the attacker
    attacker.close()
    # The app got every frame SIPp streamed, in order, and none of the attacker's.
    assert_same_frames(recording(record_dir), pattern)
