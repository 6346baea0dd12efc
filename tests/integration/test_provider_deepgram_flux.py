"""DeepgramFluxSpeechToText through the real deepgram-sdk (`listen.v2`) against the fake server's
Flux endpoint (`/v2/listen`: Connected, TurnInfo StartOfTurn/Update/EndOfTurn, ForceEndTurn).

As for the live (v1) provider, nothing in the SDK is mocked; audio is paced like the media path.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
from test_provider_deepgram import RATE, is_word_prefix, silence, stream, tone
from test_provider_deepgram import running as deepgram_running

from sipagent.providers.base import ProviderError, SttEventKind
from sipagent.providers.deepgram_flux_stt import DeepgramFluxSpeechToText
from tests.kit.fakes.deepgram_server import FakeDeepgramServer

running = functools.partial(deepgram_running, provider=DeepgramFluxSpeechToText)


async def test_a_turn_gives_speech_started_partials_and_one_final() -> None:
    said = "Can I come in on Friday morning?"
    sent = silence(0.3) + tone(1.6) + silence(1.0)
    async with FakeDeepgramServer([said]) as server:
        async with running(server, eot_threshold=0.8, eot_timeout_ms=3000) as (stt, log):
            await stream(stt, sent, speed=2.0)
            final = await log.wait_kind(SttEventKind.FINAL)
        conn = server.connections[0]

    kinds = [e.kind for e in log.events]
    assert kinds[0] == SttEventKind.SPEECH_STARTED and kinds[-1] == SttEventKind.FINAL
    partials = log.of(SttEventKind.PARTIAL)
    assert len(partials) >= 3 and all(is_word_prefix(p.text, said) for p in partials)
    assert final.text == said and final.speech_final and final.detail == ""
    assert len(log.of(SttEventKind.FINAL)) == 1 and not log.of(SttEventKind.ERROR)
    # What the SDK put on the wire: Flux's own endpoint and parameters, the key in the header,
    # every byte of audio, and CloseStream at the end.
    assert conn.protocol == "flux"
    assert conn.query == {
        "model": "flux-general-en",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "eot_threshold": "0.8",
        "eot_timeout_ms": "3000",
    }
    assert conn.headers["Authorization"] == f"Token {server.api_key}"
    assert bytes(conn.audio) == sent
    # 80 ms per message, as Deepgram recommends for Flux (the media path gives 20 ms frames);
    # only the audio before CloseStream may be shorter.
    assert set(conn.audio_messages[:-1]) == {640} and 0 < conn.audio_messages[-1] <= 640
    assert conn.controls == ["CloseStream"]
    assert conn.sent[0]["type"] == "Connected"
    assert [m["sequence_id"] for m in conn.sent] == list(range(len(conn.sent)))
    events = [(m["event"], m["transcript"]) for m in conn.sent_of_type("TurnInfo")]
    assert ("EndOfTurn", said) in events


async def test_finalize_forces_the_end_of_the_turn() -> None:
    async with FakeDeepgramServer(["Hello there."]) as server, running(server) as (stt, log):
        sent = silence(0.3) + tone(0.8)  # no trailing silence: the turn cannot end by itself
        await stream(stt, sent, speed=2.0)
        await log.wait_kind(SttEventKind.SPEECH_STARTED)
        await stt.finalize()
        final = await log.wait_kind(SttEventKind.FINAL)
        conn = server.connections[0]
        assert conn.controls == ["ForceEndTurn"]
        assert conn.control_offsets == [len(sent)]
    assert final.text == "Hello there." and final.speech_final
    assert final.detail == "from_finalize"  # trigger "manual": our ForceEndTurn ended it


async def test_a_silent_stream_is_kept_open_with_silence_not_keepalive() -> None:
    # Flux has no KeepAlive message: while the media path sends nothing, 80 ms of silence
    # goes out instead, and the stream survives the service's idle timeout.
    async with (
        FakeDeepgramServer(["Hello."], idle_timeout=1.0) as server,
        running(server, keepalive_interval=0.25) as (stt, log),
    ):
        await stream(stt, silence(0.2))
        await asyncio.sleep(2.0)
        conn = server.connections[0]
        assert server.connection_count == 1 and conn.closed_by == ""
        assert conn.controls == [] and len(conn.audio) > int(0.2 * RATE)
        assert set(bytes(conn.audio)) == {0xFF} and set(conn.audio_messages) == {640}
        await stream(stt, silence(0.2) + tone(0.6) + silence(0.6), speed=2.0)
        final = await log.wait_kind(SttEventKind.FINAL)
    assert final.text == "Hello." and server.connection_count == 1


async def test_reconnect_replays_the_audio_after_the_last_end_of_turn() -> None:
    first, second = "Yes, that's right.", "Can I come in on Friday morning?"
    sent = silence(0.3) + tone(0.8) + silence(1.5) + tone(1.2, 620.0) + silence(1.0)
    async with FakeDeepgramServer([first, second], drop_after_audio_seconds=3.2) as server:
        async with running(server) as (stt, log):
            await stream(stt, sent, speed=2.0)
            await log.wait_kind(SttEventKind.FINAL, text=second)
        conn1, conn2 = server.connections

    assert [f.text for f in log.of(SttEventKind.FINAL)] == [first, second]
    assert server.finalized == [first, second]  # the first turn was not heard twice
    (end_of_first,) = [m for m in conn1.sent_of_type("TurnInfo") if m["event"] == "EndOfTurn"]
    committed = round(end_of_first["audio_window_end"] * RATE)
    assert 0 < committed < int(2.6 * RATE)
    # The new connection starts where the first turn ended: the second turn from its start.
    assert bytes(conn2.audio) == sent[committed:]


async def test_reconnect_between_turns_replays_only_the_last_moments() -> None:
    # The socket drops 3.5 s into the silence after a turn (the caller listening to a reply):
    # nothing of that silence waits for a transcript, so it is not sent again.
    first, second = "Yes.", "And on Friday?"
    sent = silence(0.3) + tone(0.8) + silence(4.5) + tone(0.8, 620.0) + silence(1.0)
    async with FakeDeepgramServer([first, second], drop_after_audio_seconds=4.6) as server:
        async with running(server) as (stt, log):
            await stream(stt, sent, speed=2.0)
            await log.wait_kind(SttEventKind.FINAL, text=second)
        conn1, conn2 = server.connections
    assert [f.text for f in log.of(SttEventKind.FINAL)] == [first, second]
    replayed_from = len(sent) - len(conn2.audio)
    assert bytes(conn2.audio) == sent[replayed_from:]
    assert len(conn1.audio) - replayed_from <= int(0.75 * RATE)  # half a second, plus a chunk
    assert replayed_from >= int(4.0 * RATE)


async def test_wrong_api_key_raises_provider_error_without_the_key() -> None:
    async with FakeDeepgramServer() as server:
        stt = DeepgramFluxSpeechToText("dg-wrong-key-0123456789", ws_url=server.url)
        with pytest.raises(ProviderError) as error:
            await stt.start()
    assert "401" in str(error.value) and "dg-wrong-key" not in str(error.value)
    assert "/v2/listen" in str(error.value)
