"""The offline default books a call from voices that are not its own: the caller's lines are
committed flite and festival clips (bench/speech), everything else as in test_offline_call
(one real SIP call driven by SIPp, keypad phone number, stored booking)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import test_offline_call

from tests.kit.agentlib import running_agent, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "speech"))
from scoring import load_clips

pytestmark = [pytest.mark.peers]

# (seconds of silence before, clip file or "#keys"): two synthesizers in one call.
CALLER_SCRIPT = [
    (5.0, "flite-slt-100/00.ul"),  # I'd like to book a cleaning for next Tuesday at three pm.
    (7.0, "festival-kal-100/01.ul"),  # My name is David Miller.
    (6.0, "#5550123456#"),
    (12.0, "festival-kal-100/11.ul"),  # Yes, that works. Thank you, goodbye.
]


async def test_offline_booking_call_with_flite_and_festival_voices(sipp, tmp_path, monkeypatch):
    clips = {clip.file: clip.mulaw() for clip in load_clips()}
    # caller_pcap asks synthesize_fresh for the spoken lines: hand it the clips instead.
    monkeypatch.setattr(
        test_offline_call, "synthesize_fresh", lambda names: [clips[n] for n in names]
    )
    pcap, seconds = test_offline_call.caller_pcap(tmp_path / "caller.pcap", CALLER_SCRIPT, 10.0)
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
        await runner.wait()
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
    assert call.end_reason == "agent ended the call", transcript
