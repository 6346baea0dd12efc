"""Outbound calls (UAC): the agent dials a real peer, directly and through Kamailio."""

from __future__ import annotations

import asyncio

import pytest
from test_agent_calls import assert_same_frames

from sipagent.apps.player import PlayerApp
from sipagent.sip.call import CallState
from sipagent.sip.endpoint import DialError
from sipagent.sip.registration import RegistrationState
from tests.kit.agentlib import running_agent, wait_until

pytestmark = [pytest.mark.peers]


async def test_dials_a_sipp_uas_and_hears_its_file(sipp, audio_dir, tmp_path):
    agent_file = (audio_dir / "agent.ulaw").read_bytes()
    uas = sipp("uas_call.xml", params={"AUDIO": audio_dir / "agent.ulaw", "BYE_WAIT_MS": 15000})
    await uas.start()
    record_dir = tmp_path / "rec"
    async with running_agent() as agent:
        call = await agent.dial(f"sip:sipp@{uas.address}", PlayerApp(b"", record_dir))
        assert call.state == CallState.CONFIRMED and call.media.codec == "PCMU"
        await wait_until(
            lambda: call.rtp.stats.jitter.delivered * 160 >= len(agent_file) - 160, 10, "file"
        )
        await agent.hangup(call, "done")
        (await uas.wait()).check()
    received = next(record_dir.glob("*.ulaw")).read_bytes()
    assert_same_frames(received[: len(agent_file) - len(agent_file) % 160], agent_file)
    assert call.bye_status == 200


async def test_busy_callee_raises_a_clear_error(sipp):
    uas = sipp("uas_reject.xml", params={"CODE": 486, "REASON": "Busy Here"})
    await uas.start()
    async with running_agent() as agent:
        with pytest.raises(DialError) as error:
            await agent.dial(f"sip:sipp@{uas.address}")
        assert error.value.status_code == 486
        assert not agent.calls
    (await uas.wait()).check()  # it got its ACK


async def test_an_answer_without_a_codec_we_offered_is_acked_then_ended_with_bye(sipp):
    uas = sipp("uas_bad_answer.xml", params={"BYE_WAIT_MS": 5000})
    await uas.start()
    async with running_agent() as agent:
        with pytest.raises(DialError) as error:
            await agent.dial(f"sip:sipp@{uas.address}")
        assert error.value.status_code == 488
        assert not agent.calls
        ended = agent.ended_calls[-1]
        assert ended.end_reason == "no usable media in the answer"
        assert ended.bye_status == 200
        assert not agent.uac.rtp_ports.in_use  # its RTP port went back
    (await uas.wait()).check()  # it got its ACK, then the BYE


async def test_agent_calls_agent_through_the_registrar(kamailio, tmp_path):
    kam = await kamailio(qop=True, record_route=True)
    async with (
        running_agent(server=kam.address, password="agentpw", app="echo") as callee,
        running_agent(server=kam.address, user="caller", password="callerpw") as caller,
    ):
        await wait_until(
            lambda: (
                callee.registration.status.state == RegistrationState.REGISTERED
                and caller.registration.status.state == RegistrationState.REGISTERED
            ),
            5,
            "both registered",
        )
        pattern = bytes(range(1, 121)) * 40  # 30 frames, no silence byte
        call = await caller.dial(f"sip:agent@{kam.address}")
        assert call.dialog.route_set  # Record-Route seen from the UAC side
        echoed = bytearray()
        call.play(pattern)

        async def collect() -> None:
            async for frame in call.frames():
                echoed.extend(frame)

        collector = asyncio.create_task(collect())
        await wait_until(lambda: pattern[:1600] in bytes(echoed), 5, "the echo")
        await caller.hangup(call, "done")
        await collector
        await wait_until(lambda: not callee.calls, 5, "callee saw the BYE")
        assert callee.ended_calls[-1].end_reason == "caller hung up"
        assert call.bye_status == 200


async def test_keys_sent_as_rfc4733_arrive_once_each(tmp_path):
    record_dir = tmp_path / "rec"
    async with running_agent(record_dir=record_dir) as callee, running_agent() as caller:
        host, port = callee.local_address
        call = await caller.dial(f"sip:agent@{host}:{port}")
        assert call.media.telephone_event_pt == 101
        call.send_digits("0123456789*#")
        await asyncio.sleep(12 * 0.24 + 0.5)
        await caller.hangup(call, "done")
        await wait_until(lambda: bool(callee.ended_calls), 5, "callee hung up")
    assert next(record_dir.glob("*.digits")).read_text() == "0123456789*#"
