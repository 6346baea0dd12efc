"""sipagent/channel.py: the SIP call and the stand-ins keep the contract, the call records get
their fields through it, and optional app capabilities are found by type, not by name."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from sipagent.apps.echo import EchoApp
from sipagent.apps.player import PlayerApp
from sipagent.apps.receptionist import ReceptionistApp
from sipagent.booking.rules import ClinicHours
from sipagent.channel import (
    CallApp,
    CallChannel,
    CallEnd,
    CallInfo,
    HasConversations,
    MediaTimes,
    RecordsCalls,
    SaysFarewell,
    conversations_of,
    drain_call_records,
)
from sipagent.conversation.session import ConversationSettings
from sipagent.providers.scripted_llm import ScriptedReceptionist
from sipagent.sip.call import Call
from sipagent.sip.dialog import DialogState
from sipagent.sip.sdp import NegotiatedMedia
from tests.kit.conversation_standins import InstantTts, MemoryCall, PushedStt


async def _no_hangup(call: Call, reason: str) -> None:
    call.mark_ended(reason)


def sip_call(transfer: Any = None) -> Call:
    dialog = DialogState(
        call_id="c1@host",
        local_tag="ours",
        remote_tag="theirs",
        local_party="<sip:agent@192.0.2.1>",
        remote_party="<sip:+15551234567@192.0.2.9>;tag=theirs",
        remote_target="sip:caller@192.0.2.9",
    )
    return Call(
        call_id="c1@host",
        caller="sip:+15551234567@192.0.2.9",
        dialog=dialog,
        media=NegotiatedMedia("192.0.2.9", 4000, 0, "PCMU", 101, "sendrecv"),
        invite=None,
        rtp_port=20000,
        hangup_callback=_no_hangup,
        transfer_callback=transfer,
        started_at=1_790_000_000.0,
        answered_at=1_790_000_001.0,
    )


def test_the_sip_call_and_the_standin_are_call_channels() -> None:
    assert isinstance(sip_call(), CallChannel)
    assert isinstance(MemoryCall(), CallChannel)
    assert not isinstance(SimpleNamespace(call_id="x", caller="y"), CallChannel)


async def test_call_info_comes_from_the_dialog_and_the_answer() -> None:
    info = sip_call().info
    assert info == CallInfo(
        call_id="c1@host",
        from_uri="<sip:+15551234567@192.0.2.9>;tag=theirs",
        to_uri="<sip:agent@192.0.2.1>",
        started_at=1_790_000_000.0,
        answered_at=1_790_000_001.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.from_uri = "changed"  # type: ignore[misc]


async def test_the_end_is_complete_once_ended_is_set() -> None:
    call = sip_call()
    assert not call.ended.is_set() and call.end == CallEnd(None, "", None)
    call.recording_path = "/calls/c1.wav"
    await call.hangup("caller hung up")
    assert call.ended.is_set()
    end = call.end
    assert (end.end_reason, end.recording_path) == ("caller hung up", "/calls/c1.wav")
    assert end.ended_at is not None and end.ended_at >= call.started_at


async def test_media_times_before_and_after_the_media_starts() -> None:
    call = sip_call()
    assert call.media_times == MediaTimes(None, None)  # no RTP yet: nothing sent
    call.rtp = SimpleNamespace(talkspurt_started_at=12.5, last_voiced_sent_at=13.0)  # type: ignore[assignment]
    assert call.media_times == MediaTimes(talkspurt_started_at=12.5, last_voiced_sent_at=13.0)


async def test_transfer_without_refer_support_is_refused() -> None:
    assert await sip_call().transfer("sip:desk@clinic") is False
    targets: list[str] = []

    async def refer(call: Call, target: str) -> bool:
        targets.append(target)
        return True

    assert await sip_call(transfer=refer).transfer("sip:desk@clinic") is True
    assert targets == ["sip:desk@clinic"]


class RecordingRecorder:
    """Keeps what the receptionist asks CallRecorder to write, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.tasks: set[asyncio.Task[bool]] = set()
        self.drained = 0

    async def record_call_start(self, call_id: str, **fields: Any) -> bool:
        self.writes.append(("start", {"call_id": call_id, **fields}))
        return True

    async def record_call_end(self, call_id: str, **fields: Any) -> bool:
        self.writes.append(("end", {"call_id": call_id, **fields}))
        return True

    async def record_turn(self, call_id: str, index: int, turn: Any) -> bool:
        return True

    def spawn(self, record: Any) -> asyncio.Task[bool]:
        task = asyncio.ensure_future(record)
        self.tasks.add(task)
        return task

    async def drain(self) -> None:
        self.drained += 1
        await asyncio.gather(*self.tasks)


class AnsweredCall(MemoryCall):
    """MemoryCall with a caller, answer time and an end like a real call's."""

    def __init__(self) -> None:
        super().__init__()
        self.info = CallInfo(self.call_id, "<sip:+15550001111@pbx>;tag=a", "<sip:agent@pbx>",
                             100.0, 101.5)  # fmt: skip

    @property
    def end(self) -> CallEnd:
        return CallEnd(160.0, self.end_reason, "/calls/unit-call.wav")


def receptionist(recorder: RecordingRecorder | None) -> ReceptionistApp:
    providers = SimpleNamespace(
        new_stt=PushedStt, llm=ScriptedReceptionist(), tts=InstantTts(), fallback_tts=None,
        tts_slots=None, choice=SimpleNamespace(offline=True),
    )  # fmt: skip
    return ReceptionistApp(
        providers,  # type: ignore[arg-type]
        ConversationSettings(idle_reprompt_seconds=60.0),
        ClinicHours(),
        recorder=recorder,  # type: ignore[arg-type]
    )


async def test_the_call_record_carries_the_channels_info_and_end() -> None:
    recorder = RecordingRecorder()
    app = receptionist(recorder)
    call = AnsweredCall()
    handled = asyncio.create_task(app.handle(call))
    while not call.played:  # the greeting is being said
        await asyncio.sleep(0)
    await call.hangup("caller hung up")
    await asyncio.wait_for(handled, 5)
    await drain_call_records(app)
    assert recorder.drained == 1
    start, end = recorder.writes[0], recorder.writes[-1]
    assert start == ("start", {"call_id": "unit-call", "from_uri": "<sip:+15550001111@pbx>;tag=a",
                               "to_uri": "<sip:agent@pbx>", "started_at": 100.0,
                               "answered_at": 101.5, "offline_mode": True})  # fmt: skip
    assert end == ("end", {"call_id": "unit-call", "ended_at": 160.0,
                           "end_reason": "caller hung up",
                           "recording_path": "/calls/unit-call.wav"})  # fmt: skip


def test_app_capabilities_are_found_by_type() -> None:
    with_records = receptionist(RecordingRecorder())
    for app in (with_records, receptionist(None)):
        assert isinstance(app, CallApp)
        assert isinstance(app, SaysFarewell)
        assert isinstance(app, RecordsCalls)
        assert isinstance(app, HasConversations)
    for app in (EchoApp(), PlayerApp(b"", None)):
        assert isinstance(app, CallApp)
        assert not isinstance(app, SaysFarewell | RecordsCalls | HasConversations)
        assert conversations_of(app) == {}
    assert conversations_of(with_records) is with_records.sessions


async def test_draining_call_records_of_apps_without_any_is_a_no_op() -> None:
    await drain_call_records(EchoApp())
    await drain_call_records(receptionist(None))  # a receptionist without a database
