"""The receptionist end to end over SIP: a SIPp caller speaks, the agent (real provider SDKs
against wire-protocol fakes) answers, books, reads back, is interrupted, recovers."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from sipagent.conversation.chunker import SentenceChunker
from sipagent.conversation.session import APOLOGY, LLM_FALLBACK, ConversationSettings
from sipagent.observability.events import ProviderStage
from sipagent.sip.call import CallState
from sipagent.storage.models import AppointmentRecord, CallRecord
from tests.kit.agentlib import running_agent, wait_until
from tests.kit.fakes.deepgram_server import FakeDeepgramServer
from tests.kit.fakes.elevenlabs_server import FakeElevenLabsServer, expected_audio
from tests.kit.fakes.openai_server import FakeOpenAIServer, FakeToolCall, Reply
from tests.kit.peerlib.capture import rtp_packets

pytestmark = [pytest.mark.peers]

SILENCE = b"\xff"


def caller_audio(audio, tmp_path: Path, script: list[tuple[float, str]], tail: float) -> Path:
    """Raw mu-law: for each (silence before, text) the silence then espeak's speech."""
    data = bytearray()
    for gap, text in script:
        data += SILENCE * int(gap * 8000)
        data += audio.speech_ulaw(text).read_bytes()
    data += SILENCE * int(tail * 8000)
    data += SILENCE * (-len(data) % 160)
    path = tmp_path / "caller.ulaw"
    path.write_bytes(bytes(data))
    return path


def stored_call_and_turns(engine, call_id: str):
    with Session(engine) as db:
        call = db.scalars(select(CallRecord).where(CallRecord.sip_call_id == call_id)).one()
        turns = sorted(call.turns, key=lambda t: t.index)
        appointment = db.scalars(select(AppointmentRecord)).one()
        assert appointment.call_id == call.id
        return call, turns


def agent_settings(deepgram, openai, elevenlabs) -> dict:
    return {
        "app": "receptionist",
        "deepgram_api_key": deepgram.api_key,
        "deepgram_url": deepgram.url,
        "openai_api_key": openai.api_key,
        "openai_base_url": openai.base_url,
        "elevenlabs_api_key": elevenlabs.api_key,
        "elevenlabs_base_url": elevenlabs.base_url,
        "idle_reprompt_seconds": 30.0,
    }


def next_tuesday() -> str:
    """ "next Tuesday" as a model resolves it (ISO, in the clinic's time zone)."""
    today = datetime.now(ZoneInfo("America/New_York")).date()
    return (today + timedelta(days=(1 - today.weekday()) % 7 or 7)).isoformat()


BOOKING = {
    "patient_name": "Maria Lopez", "phone": "555 123 4567", "preferred_date": next_tuesday(),
    "preferred_time": "15:00", "reason": "cleaning",
}  # fmt: skip


def receptionist_replies(request: dict) -> Reply:
    """What a good model would answer, decided from the conversation so far."""
    last = request["messages"][-1]
    if last["role"] == "tool":
        result = json.loads(last["content"])
        if result.get("appointment_id"):
            return Reply(f"You're booked for a {result['reason']} on {result['when']}. "
                         "Anything else?")  # fmt: skip
        return Reply("")
    text = last["content"].lower()
    if "bye" in text:
        return Reply("Thanks for calling, goodbye!", (FakeToolCall.of("end_call", {}, "call_e"),))
    if "keypad" in text:
        return Reply("Thanks, I have your number.")
    if "book" in text:
        return Reply("", (FakeToolCall.of("book_appointment", BOOKING, "call_b"),))
    return Reply("Of course. How can I help you with that?")


def spoken_audio(text: str) -> list[bytes]:
    """What the fake TTS returns for `text`, sentence chunk by chunk, as the agent asks it."""
    defaults = ConversationSettings()
    chunker = SentenceChunker(
        min_chars=defaults.min_chunk_chars, first_min_chars=defaults.first_chunk_min_chars
    )
    return [expected_audio(chunk) for chunk in chunker.feed(text) + chunker.flush()]


def heard_all(text: str, heard: bytes) -> bool:
    return all(audio in heard for audio in spoken_audio(text))


def agent_stream(capture, media_port: int) -> bytes:
    """The agent's voiced audio as the caller received it, silence removed (the fake TTS
    never produces 0xFF, so pauses and padding drop out and sentences read contiguously)."""
    packets = [p for p in rtp_packets(capture.datagrams(), dst_port=media_port) if p.pt == 0]
    return b"".join(p.payload for p in packets).replace(SILENCE, b"")


async def test_booking_call_with_read_back_and_agent_hangup(sipp, capture, audio, tmp_path):
    caller = caller_audio(
        audio, tmp_path,
        [(5.0, "I would like to book a cleaning for next Tuesday at three pm, my name is Maria "
               "Lopez and my number is five five five one two three four five six seven."),
         (9.0, "No, that's all. Bye.")],
        tail=6.0,
    )  # fmt: skip
    transcripts = [
        "I would like to book a cleaning for next Tuesday at 3 pm, my name is Maria Lopez "
        "and my number is 555 123 4567.",
        "No, that's all. Bye.",
    ]
    async with (
        FakeDeepgramServer(transcripts) as deepgram,
        FakeOpenAIServer(receptionist_replies) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(**agent_settings(deepgram, openai, elevenlabs)) as agent,
    ):
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 40000}, timeout=50)  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)
            await wait_until(lambda: bool(agent.ended_calls), 45, "the agent to hang up")
            result = (await runner.wait()).check()
        call = agent.ended_calls[0]
        app = agent.app
        session = app.sessions[call.call_id]
        await app.recorder.drain()
        [appointment] = await app.store.for_call(call.call_id)
        stored_call, stored_turns = stored_call_and_turns(app.store.engine, call.call_id)
    assert call.end_reason == "agent ended the call"
    assert "BYE" in result.received_requests()
    # The call and its turns are in the database, linked to the booking.
    assert stored_call.end_reason == "agent ended the call" and stored_call.ended_at
    # Every field of the record comes from the real call through the typed channel: a rename
    # on the telephony side must not leave it empty.
    assert (stored_call.from_uri, stored_call.to_uri) == (
        call.dialog.remote_party,
        call.dialog.local_party,
    )
    assert stored_call.from_uri and stored_call.to_uri
    assert stored_call.started_at.timestamp() == pytest.approx(call.started_at, abs=1e-3)
    assert stored_call.answered_at.timestamp() == pytest.approx(call.answered_at, abs=1e-3)
    assert stored_call.ended_at.timestamp() == pytest.approx(call.ended_at, abs=1e-3)
    assert call.started_at < call.answered_at < call.ended_at
    assert [t.role for t in stored_turns] == [t.role for t in session.turns]
    assert stored_turns[1].text == session.turns[1].text and stored_turns[2].first_reply_packet_ms
    assert (appointment.patient_name, appointment.reason) == ("Maria Lopez", "cleaning")
    assert appointment.phone == "+15551234567" and appointment.call_id == call.call_id
    assert appointment.start.strftime("%A %H:%M") == "Tuesday 15:00"
    # The tool result went back to the model, which read the booking back.
    second = openai.requests[1]
    assert second.messages[-1]["role"] == "tool" and '"ok": true' in second.messages[-1]["content"]
    # The LLM connection was opened while the greeting played, and the first turn reused it.
    [warm_up] = openai.warm_ups
    assert warm_up.received_at < openai.requests[0].received_at
    assert openai.requests[0].client_port == warm_up.client_port
    readback = next(t for t in session.turns if t.role == "assistant" and "booked" in t.text)
    heard = agent_stream(cap, runner.media_port)
    greeting = app.conversation.greeting
    for text in (greeting, readback.text, "Thanks for calling, goodbye!"):
        assert heard_all(text, heard), f"caller did not hear {text!r}"
    # Per-turn timings were recorded from the wire.
    user_turn = session.turns[1]
    assert user_turn.role == "user" and user_turn.timings.caller_speech_end is not None
    assert user_turn.timings.stt_final > user_turn.timings.caller_speech_end
    for name in ("llm_first_token", "tts_first_byte", "first_reply_packet"):
        assert getattr(readback.timings, name) is not None, name


async def test_barge_in_silences_the_agent_and_keeps_only_what_was_heard(
    sipp, capture, audio, tmp_path
):
    # The caller talks over the greeting (which lasts ~4 s) after 1.5 s.
    caller = caller_audio(
        audio, tmp_path, [(1.5, "Sorry, actually I have a toothache, it is an emergency.")],
        tail=6.0,
    )  # fmt: skip
    async with (
        FakeDeepgramServer(["Sorry, actually I have a toothache, it is an emergency."]) as dg,
        FakeOpenAIServer(
            lambda request: Reply("I'm sorry to hear that. Let's get you in today.")
        ) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(**agent_settings(dg, openai, elevenlabs)) as agent,
    ):
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 9000})  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)
            await wait_until(lambda: bool(agent.ended_calls), 15, "the caller to hang up")
            (await runner.wait()).check()
        call = agent.ended_calls[0]
        session = agent.app.sessions[call.call_id]
    greeting_turn = session.turns[0]
    assert greeting_turn.interrupted
    greeting = agent.app.conversation.greeting
    assert greeting.startswith(greeting_turn.heard_text) and greeting_turn.heard_text != greeting
    assert any(
        m["role"] == "assistant" and "[interrupted by the caller]" in (m["content"] or "")
        for m in openai.requests[0].messages
    )
    timings = greeting_turn.timings
    # Two steps: the line goes quiet on the caller's voice (pause), then words confirm it.
    assert timings.barge_in_onset < timings.last_voiced_packet <= timings.barge_in_decision + 0.05
    heard = agent_stream(cap, runner.media_port)
    assert not heard_all(greeting, heard)  # the greeting was cut off on the wire
    assert heard_all("I'm sorry to hear that. Let's get you in today.", heard)  # the reply


async def test_llm_failure_is_spoken_around_and_tts_falls_back(sipp, capture, audio, tmp_path):
    caller = caller_audio(audio, tmp_path, [(5.0, "I want to book a checkup.")], tail=8.0)
    async with (
        FakeDeepgramServer(["I want to book a checkup."]) as deepgram,
        FakeOpenAIServer(lambda request: Reply("Sure, what day works for you?")) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(**agent_settings(deepgram, openai, elevenlabs)) as agent,
    ):
        openai.fail_next(500, 1)
        elevenlabs.fail_next(500, 1)  # the greeting's TTS fails: the offline voice says it
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 12000}, timeout=20)  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)
            await wait_until(lambda: bool(agent.ended_calls), 20, "the caller to hang up")
            (await runner.wait()).check()
        session = agent.app.sessions[agent.ended_calls[0].call_id]
    heard = agent_stream(cap, runner.media_port)
    first, *rest = spoken_audio(agent.app.conversation.greeting)
    assert first not in heard and all(audio in heard for audio in rest)
    assert any(f.stage == ProviderStage.TTS for f in session.failures.recent)
    assert len(heard) > 8000  # its first sentence was spoken by the offline voice instead
    assert any(f.stage == ProviderStage.LLM for f in session.failures.recent)
    assert heard_all("Sorry, just one moment.", heard)
    assert heard_all("Sure, what day works for you?", heard)
    assert len(openai.requests) == 2  # one failure, one retry


async def test_keypad_digits_reach_the_model(sipp, tmp_path):
    from tests.kit.peerlib.capture import write_dtmf_pcap

    async with (
        FakeDeepgramServer([]) as deepgram,
        FakeOpenAIServer(receptionist_replies) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(**agent_settings(deepgram, openai, elevenlabs)) as agent,
    ):
        host, port = agent.local_address
        pcap = write_dtmf_pcap(tmp_path / "dtmf.pcap", "5551234567#", pt=101)
        runner = sipp("uac_dtmf.xml", remote=f"{host}:{port}", service="agent",
                      params={"DTMF_PCAP": pcap, "HOLD_MS": 9000, "PRE_MS": 4500})  # fmt: skip
        await runner.start(wait_bound=False)
        await wait_until(lambda: len(openai.requests) >= 1, 15, "the keypad turn")
        (await runner.wait()).check()
    assert openai.requests[0].messages[-1] == {"role": "user", "content": "(keypad) 5551234567"}
    assert agent.ended_calls[0].state == CallState.ENDED


async def test_a_turn_heard_by_deepgram_flux(sipp, capture, audio, tmp_path):
    # DEEPGRAM_MODEL=flux-*: the agent listens on /v2/listen and Flux's EndOfTurn ends the turn.
    caller = caller_audio(audio, tmp_path, [(4.0, "Hello, I have a question please.")], tail=5.0)
    said = "Hello, I have a question, please."
    reply = "Of course. How can I help you with that?"
    async with (
        FakeDeepgramServer([said]) as deepgram,
        FakeOpenAIServer(receptionist_replies) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(
            **agent_settings(deepgram, openai, elevenlabs), deepgram_model="flux-general-en"
        ) as agent,
    ):
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 12000}, timeout=30)  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)
            (await runner.wait()).check()
            await wait_until(lambda: bool(agent.ended_calls), 10, "the call to end")
        session = agent.app.sessions[agent.ended_calls[0].call_id]
    [conn] = deepgram.connections
    assert conn.protocol == "flux" and conn.query["model"] == "flux-general-en"
    assert "endpointing" not in conn.query
    assert openai.requests[0].messages[-1] == {"role": "user", "content": said}
    assert [(t.role, t.text) for t in session.turns[1:3]] == [("user", said), ("assistant", reply)]
    assert heard_all(reply, agent_stream(cap, runner.media_port))


def parking_replies(request: dict) -> Reply:
    """A model that books with a sentence first, and answers a question about parking."""
    last = request["messages"][-1]
    if last["role"] == "tool":
        return Reply("You're booked. Anything else?")
    text = last["content"].lower()
    if "parking" in text:
        return Reply("Yes, we have free parking behind the clinic.")
    if "book" in text:
        booking = FakeToolCall.of("book_appointment", BOOKING, "call_b")
        return Reply("Let me book that for you.", (booking,))
    return Reply("Of course. How can I help you with that?")


async def test_a_new_turn_during_a_slow_booking_keeps_the_booking_and_the_history_valid(
    sipp, capture, audio, tmp_path
):
    said = ["I would like to book a cleaning.", "Is there parking at the clinic?"]
    # The second question comes while the booking still waits (gaps are silence between).
    caller = caller_audio(audio, tmp_path, [(5.0, said[0]), (2.0, said[1])], tail=6.0)
    database = tmp_path / "agent.db"
    async with (
        FakeDeepgramServer(said) as deepgram,
        FakeOpenAIServer(parking_replies) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(
            **agent_settings(deepgram, openai, elevenlabs), database_url=f"sqlite:///{database}"
        ) as agent,
    ):
        # The database is busy (another writer holds its lock): the booking waits in the
        # tool round while the caller moves on.
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 19000}, timeout=30)  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)

            def callers_turns() -> int:
                return sum(t.role == "user" for s in agent.app.sessions.values() for t in s.turns)

            await wait_until(lambda: callers_turns() == 2, 20, "the caller's second turn")
            assert len(openai.requests) == 1  # the next request waits for the booking
            lock.execute("ROLLBACK")
            lock.close()
            await wait_until(lambda: bool(agent.ended_calls), 25, "the caller to hang up")
            (await runner.wait()).check()
        call = agent.ended_calls[0]
        [appointment] = await agent.app.store.for_call(call.call_id)
    # Every request was one the real API accepts (the strict fake answers 400 otherwise).
    assert [r.status for r in openai.requests] == [200, 200]
    second = openai.requests[1].messages
    answer = next(m for m in second if m["role"] == "tool")
    assert json.loads(answer["content"])["appointment_id"] == appointment.id
    assert second[-1] == {"role": "user", "content": said[1]}
    assert appointment.patient_name == "Maria Lopez"
    heard = agent_stream(cap, runner.media_port)
    assert heard_all("Yes, we have free parking behind the clinic.", heard)


async def test_two_llm_failures_in_a_row_end_in_the_spoken_fallback(sipp, capture, audio, tmp_path):
    caller = caller_audio(audio, tmp_path, [(5.0, "I want to book a checkup.")], tail=12.0)
    async with (
        FakeDeepgramServer(["I want to book a checkup."]) as deepgram,
        FakeOpenAIServer(lambda request: Reply("never said")) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(**agent_settings(deepgram, openai, elevenlabs)) as agent,
    ):
        openai.fail_next(500, 2)
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": caller, "HOLD_MS": 16000}, timeout=25)  # fmt: skip
        async with capture(runner.media_port) as cap:
            await runner.start(wait_bound=False)
            await wait_until(lambda: bool(agent.ended_calls), 25, "the caller to hang up")
            (await runner.wait()).check()
        session = agent.app.sessions[agent.ended_calls[0].call_id]
    heard = agent_stream(cap, runner.media_port)
    assert heard_all(APOLOGY, heard) and heard_all(LLM_FALLBACK, heard)
    assert [r.status for r in openai.requests] == [500, 500]
    assert [f.stage for f in session.failures.recent] == [ProviderStage.LLM, ProviderStage.LLM]
