"""ReceptionistApp: finished calls' conversations are released, not kept forever."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from sipagent.apps.receptionist import ReceptionistApp
from sipagent.booking.rules import ClinicHours
from sipagent.conversation.session import ConversationSettings
from sipagent.providers.deepgram_stt import ReplayBuffer
from sipagent.providers.scripted_llm import ScriptedReceptionist
from tests.kit.conversation_standins import InstantTts, MemoryCall, PushedStt


class EndingCall(MemoryCall):
    def __init__(self, call_id: str) -> None:
        super().__init__()
        self.call_id = call_id


async def test_only_the_last_finished_conversations_are_kept() -> None:
    providers = SimpleNamespace(
        new_stt=PushedStt, llm=ScriptedReceptionist(), tts=InstantTts(), fallback_tts=None,
        tts_slots=None, choice=SimpleNamespace(offline=True),
    )  # fmt: skip
    app = ReceptionistApp(
        providers,  # type: ignore[arg-type]
        ConversationSettings(idle_reprompt_seconds=60.0),
        ClinicHours(),
        keep_ended=3,
    )
    for n in range(10):
        call = EndingCall(f"call-{n}")
        handled = asyncio.create_task(app.handle(call))  # type: ignore[arg-type]
        while not call.played:  # the greeting is being said
            await asyncio.sleep(0)
        assert f"call-{n}" in app.sessions
        await call.hangup()
        await asyncio.wait_for(handled, 5)
    assert list(app.sessions) == ["call-7", "call-8", "call-9"]

    # A call in progress is never released, however many finish around it.
    long_call = EndingCall("long")
    long_handled = asyncio.create_task(app.handle(long_call))  # type: ignore[arg-type]
    for n in range(10, 15):
        call = EndingCall(f"call-{n}")
        handled = asyncio.create_task(app.handle(call))  # type: ignore[arg-type]
        while not call.played:
            await asyncio.sleep(0)
        await call.hangup()
        await asyncio.wait_for(handled, 5)
    assert "long" in app.sessions and len(app.sessions) == 4
    await long_call.hangup()
    await asyncio.wait_for(long_handled, 5)


def test_a_finished_stream_releases_its_replay_audio() -> None:
    buffer = ReplayBuffer(240_000)
    buffer.append(b"\x01" * 80_000)
    buffer.mark_sent(60_000)
    buffer.release()
    assert buffer.end == 80_000 and buffer.next_chunk(1000) == (80_000, b"")
    assert buffer.rewind() == 0
