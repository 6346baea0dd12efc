"""Dialog details over real UDP: OPTIONS, INVITE retransmission, 200 retransmission until
ACK, re-INVITE moving the media, 481 for unknown dialogs, RTP from a re-INVITEd address."""

from __future__ import annotations

import asyncio
import socket

from sipagent.sip.call import CallState
from tests.kit.agentlib import MiniUac, request, running_agent, sdp, wait_until


async def test_options_and_unknown_dialogs():
    async with running_agent() as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        uac.send(request("OPTIONS", uac, port, cseq=1), agent.local_address)
        uac.send(request("BYE", uac, port, cseq=2, to_tag="nope", branch="z9hG4bKb"),
                 agent.local_address)  # fmt: skip
        uac.send(request("SUBSCRIBE", uac, port, cseq=3, branch="z9hG4bKs"), agent.local_address)
        await uac.collect(0.5)
        options = next(m for m in uac.received if m.cseq_method == "OPTIONS")
        assert options.status_code == 200 and "INVITE" in (options.first("Allow") or "")
        assert uac.statuses("BYE") == [481]
        assert uac.statuses("SUBSCRIBE") == [405]


async def test_invite_retransmissions_reinvite_and_bye():
    media_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media_a.bind(("127.0.0.1", 0))
    media_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media_b.bind(("127.0.0.1", 0))
    media_b.settimeout(2.0)
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        invite = request("INVITE", uac, port, cseq=1, sdp=sdp(media_a.getsockname()[1]))
        uac.send(invite, agent.local_address)
        uac.send(invite, agent.local_address)  # a retransmission: same branch
        await uac.collect(1.3)  # no ACK yet: the 200 OK must be retransmitted (T1 = 500 ms)
        invite_statuses = uac.statuses("INVITE")
        assert invite_statuses.count(200) >= 2, invite_statuses  # answer + >= 1 retransmission
        # The retransmitted INVITE got our latest response again (180 or 200, by timing).
        assert invite_statuses.count(180) + invite_statuses.count(200) >= 4, invite_statuses
        assert len(agent.calls) == 1 and 100 in invite_statuses
        ok = next(m for m in uac.received if m.status_code == 200)
        assert b"m=audio" in ok.content and b"RTP/AVP 0" in ok.content  # PCMU preferred
        to_tag = ok.to_tag
        uac.send(request("ACK", uac, port, cseq=1, to_tag=to_tag, branch="z9hG4bKack"),
                 agent.local_address)  # fmt: skip
        await wait_until(
            lambda: next(iter(agent.calls.values())).state == CallState.CONFIRMED, 2, "ACKed"
        )
        uac.received.clear()
        await uac.collect(1.2)
        assert uac.statuses("INVITE") == [], "200 OK still retransmitted after the ACK"

        # re-INVITE moving our media to another port: the agent's RTP follows it.
        reinvite = request("INVITE", uac, port, cseq=2, to_tag=to_tag, branch="z9hG4bKre",
                           sdp=sdp(media_b.getsockname()[1], version=2))  # fmt: skip
        uac.send(reinvite, agent.local_address)
        await uac.collect(0.5)
        answer = next(m for m in uac.received if m.cseq_method == "INVITE" and m.status_code == 200)
        assert answer.to_tag == to_tag and b" 2 IN IP4" in answer.content  # version bumped
        uac.send(request("ACK", uac, port, cseq=2, to_tag=to_tag, branch="z9hG4bKack2"),
                 agent.local_address)  # fmt: skip
        data, _ = await asyncio.get_running_loop().run_in_executor(None, media_b.recvfrom, 2048)
        assert data[0] >> 6 == 2 and len(data) == 172  # a 20 ms PCMU RTP packet

        uac.send(request("BYE", uac, port, cseq=3, to_tag=to_tag, branch="z9hG4bKbye"),
                 agent.local_address)  # fmt: skip
        await uac.collect(0.5)
        assert uac.statuses("BYE") == [200]
        await wait_until(lambda: not agent.calls, 2, "call ended")
        assert agent.ended_calls[-1].end_reason == "caller hung up"
    media_a.close()
    media_b.close()


async def test_invites_from_outside_the_allowed_sources_get_403():
    async with running_agent(allowed_sources="10.0.0.0/8, 192.0.2.7") as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        uac.send(request("INVITE", uac, port, cseq=1, sdp=sdp(40000)), agent.local_address)
        await uac.collect(0.5)
        assert uac.statuses("INVITE") == [403] and not agent.calls
    async with running_agent(allowed_sources="127.0.0.0/8") as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        uac.send(request("INVITE", uac, port, cseq=1, sdp=sdp(40000)), agent.local_address)
        await uac.collect(0.5)
        assert 200 in uac.statuses("INVITE")
        to_tag = next(m for m in uac.received if m.status_code == 200).to_tag
        uac.send(request("BYE", uac, port, cseq=2, to_tag=to_tag, branch="z9hG4bKb2"),
                 agent.local_address)  # fmt: skip
        await uac.collect(0.3)
