"""The embedded default end to end: offline STT (pocketsphinx), scripted receptionist and
offline voice (espeak-ng), one real SIP call from speech to a stored booking.

The caller speaks (espeak-ng, the same library voice the offline STT tests use) and types the
phone number on the keypad (RFC 4733), as callers do; SIPp replays it all from one pcap."""

from __future__ import annotations

import struct

import pytest
from test_offline_stt import synthesize_fresh

from tests.kit.agentlib import running_agent, wait_until
from tests.kit.peerlib.capture import DTMF_EVENTS, Datagram, write_udp_pcap

pytestmark = [pytest.mark.peers]

SILENCE = b"\xff" * 160
# (seconds of silence before, what the caller says or "#keys" typed on the keypad)
CALLER_SCRIPT = [
    (5.0, "I'd like to book a cleaning for next Tuesday at three pm."),
    (7.0, "My name is David Miller."),
    (6.0, "#5550123456#"),
    (12.0, "No, thanks, goodbye."),
]


def caller_pcap(path, script: list[tuple[float, str]], tail: float):
    """One RTP stream (PCMU + telephone-event 101) with the script's speech and key presses."""
    spoken = iter(synthesize_fresh([text for _, text in script if not text.startswith("#")]))
    datagrams: list[Datagram] = []
    seq, ts, t = 1000, 80_000, 0.0

    def packet(payload_type: int, payload: bytes, timestamp: int, marker: bool = False) -> None:
        nonlocal seq, t
        header = struct.pack("!BBHII", 0x80, payload_type | (0x80 if marker else 0), seq & 0xFFFF,
                             timestamp & 0xFFFFFFFF, 0x0FF1CE)  # fmt: skip
        datagrams.append(Datagram(t, ("127.0.0.1", 40000), ("127.0.0.1", 40002), header + payload))
        seq += 1
        t += 0.02

    def audio(data: bytes) -> None:
        nonlocal ts
        data += b"\xff" * (-len(data) % 160)
        for i in range(0, len(data), 160):
            packet(0, data[i : i + 160], ts, marker=not datagrams)
            ts += 160

    for gap, text in script:
        audio(SILENCE * int(gap * 50))
        if text.startswith("#"):
            for key in text.strip("#") + "#":
                event, start = DTMF_EVENTS.index(key), ts
                for step in range(1, 9):
                    packet(101, struct.pack("!BBH", event, 10, step * 160), start, step == 1)
                for _ in range(3):
                    packet(101, struct.pack("!BBH", event, 0x80 | 10, 8 * 160), start)
                ts = start + 11 * 160
                audio(SILENCE * 5)
        else:
            audio(next(spoken))
    audio(SILENCE * int(tail * 50))
    return write_udp_pcap(path, datagrams), t


async def test_offline_booking_call(sipp, tmp_path):
    pcap, seconds = caller_pcap(tmp_path / "caller.pcap", CALLER_SCRIPT, tail=10.0)
    async with running_agent(app="receptionist", stt="offline", llm="offline", tts="offline",
                             idle_reprompt_seconds=30.0) as agent:  # fmt: skip
        assert agent.app.providers.choice.offline
        host, port = agent.local_address
        runner = sipp("uac_dtmf.xml", remote=f"{host}:{port}", service="agent",
                      timeout=seconds + 20,
                      params={"DTMF_PCAP": pcap, "PRE_MS": 0,
                              "HOLD_MS": int(seconds * 1000) + 5000})  # fmt: skip
        await runner.start(wait_bound=False)
        await wait_until(lambda: bool(agent.ended_calls), seconds + 15, "the agent's goodbye")
        result = (await runner.wait()).check()
        call = agent.ended_calls[0]
        session = agent.app.sessions[call.call_id]
        appointments = await agent.app.store.for_call(call.call_id)
    transcript = "\n".join(f"{t.role}: {t.text}" for t in session.turns)
    assert len(appointments) == 1, transcript
    [appointment] = appointments
    assert (appointment.patient_name, appointment.reason) == ("David Miller", "cleaning"), (
        transcript
    )
    assert appointment.start.strftime("%A %H:%M") == "Tuesday 15:00", transcript
    assert appointment.phone == "+15550123456", transcript
    assert any("You're all set, David Miller" in t.text for t in session.turns), transcript
    assert call.end_reason == "agent ended the call" and "BYE" in result.received_requests()
