"""The conversation feeds a batching STT (BatchesAudio) through SttFeed: no audio is left waiting
when a key is pressed or when the STT is closed (CloseStream must come after the last audio)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import InMemoryBookingStore
from sipagent.conversation.session import ConversationSession, ConversationSettings
from sipagent.providers.scripted_llm import ScriptedReceptionist
from sipagent.tools.receptionist import ReceptionistTools, receptionist_prompt
from tests.kit.conversation_standins import InstantTts, MemoryCall, PushedStt, wait_for

SILENT = b"\xff" * 160


class BatchingStt(PushedStt):
    """Asks for 80 ms batches; records what reached it, in order."""

    audio_batch_ms = 80
    speech_tail_ms = 500

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int]] = []

    def send_audio(self, mulaw: bytes) -> None:
        self.log.append(("audio", len(mulaw)))

    async def close(self) -> None:
        self.log.append(("close", 0))
        await super().close()


class FramesThenKeys(MemoryCall):
    """Three silent frames (less than a batch), then, when the test says so, a key press."""

    def __init__(self) -> None:
        super().__init__()
        self.frames_given = asyncio.Event()
        self.press = asyncio.Event()

    async def frames(self) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield SILENT
        self.frames_given.set()
        await self.ended.wait()

    async def digits(self) -> AsyncIterator[str]:
        await self.press.wait()
        yield "5"
        await self.ended.wait()


def session_for(call: MemoryCall, stt: PushedStt) -> ConversationSession:
    tools = ReceptionistTools(
        InMemoryBookingStore(), ClinicHours(), clock=lambda: datetime.now(UTC)
    )
    return ConversationSession(
        call,
        stt=stt,
        llm=ScriptedReceptionist(clinic_name="Sunrise Dental"),
        tts=InstantTts(),
        toolset=tools,
        system_prompt=receptionist_prompt("Sarah", "Sunrise Dental", today=""),
        settings=ConversationSettings(greeting="Hello."),
    )


async def test_the_partial_batch_goes_out_before_close_stream() -> None:
    call, stt = FramesThenKeys(), BatchingStt()
    runner = asyncio.create_task(session_for(call, stt).run())
    await wait_for(call.frames_given.is_set, "the frames taken")
    await asyncio.sleep(0)
    assert stt.log == []  # 60 ms: waiting for a full batch
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    assert stt.log == [("audio", 480), ("close", 0)]


async def test_a_key_press_sends_the_partial_batch_at_once() -> None:
    call, stt = FramesThenKeys(), BatchingStt()
    runner = asyncio.create_task(session_for(call, stt).run())
    await wait_for(call.frames_given.is_set, "the frames taken")
    call.press.set()
    async with asyncio.timeout(0.1):  # not the batch's own deadline (160 ms)
        await wait_for(lambda: stt.log == [("audio", 480)], "the batch sent on the key press")
    call.ended.set()
    await asyncio.wait_for(runner, 5)
    assert stt.log == [("audio", 480), ("close", 0)]
