"""Issue 9: a legal dynamic payload type for PCMU (`a=rtpmap:96 PCMU/8000`) must not only be
answered 200 (tests/kit/sip_corpus.py checks that) but work: the echo comes back, as PT 96."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

from tests.kit.agentlib import drain
from tests.kit.hostile_input import build_request, build_sdp
from tests.kit.peerlib.sip_blaster import CorpusSender
from tests.kit.sip_inprocess import echo_agent, hang_up_all

FRAMES = 100


def rtp(seq: int, payload_type: int = 96) -> bytes:
    payload = struct.pack("!I", seq) + bytes((seq + i) % 256 for i in range(156))
    return struct.pack("!BBHII", 0x80, payload_type, seq, seq * 160, 0x5EED) + payload


async def test_dynamic_payload_type_96_for_pcmu_echoes_both_ways():
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    media_port = media.getsockname()[1]
    try:
        async with echo_agent() as endpoint, CorpusSender(endpoint.local_address) as caller:
            host, port = caller.address
            agent_host, agent_port = endpoint.local_address
            caller.ack_only.add("unusual-pt96-works@127.0.0.1")  # ACK the 200, keep the call
            invite = build_request(
                "INVITE", "pt96-works", target=f"sip:agent@{agent_host}:{agent_port}",
                via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-pt96-works;rport",
                contact=f"<sip:caller@{host}:{port}>",
                body=build_sdp(f"m=audio {media_port} RTP/AVP 96", "a=rtpmap:96 PCMU/8000"),
            )  # fmt: skip
            answers = await caller.exchange(invite, 3.0)
            final = [a for a in answers if a.status >= 200]
            assert [a.status for a in final][:1] == [200], [a.text[:200] for a in answers]
            answer_sdp = final[0].text.split("\r\n\r\n", 1)[1]
            assert "a=rtpmap:96 PCMU/8000" in answer_sdp and " RTP/AVP 96" in answer_sdp
            agent_media_port = int(re.search(r"m=audio (\d+) ", answer_sdp).group(1))
            echoed: list[bytes] = []
            for seq in range(FRAMES):
                media.sendto(rtp(seq), ("127.0.0.1", agent_media_port))
                await asyncio.sleep(0.02)
                echoed += drain(media)
            await asyncio.sleep(0.3)
            echoed += drain(media)
            await hang_up_all(endpoint)
    finally:
        media.close()
    payload_types = {packet[1] & 0x7F for packet in echoed}
    sent = {rtp(seq)[12:] for seq in range(FRAMES)}
    came_back = {packet[12:] for packet in echoed} & sent
    assert payload_types == {96}, f"echo sent as PT {payload_types}, not the offer's 96"
    assert len(came_back) >= FRAMES * 8 // 10, f"{len(came_back)} of {FRAMES} frames echoed"
