"""DeepgramSpeechToText through the real deepgram-sdk against the fake live-transcription server.

Nothing in the SDK is mocked: the provider opens a real websocket (the SDK's own connect path,
headers and query encoding) to `tests/kit/fakes/deepgram_server.py`, which parses what it receives
and answers in Deepgram's wire format. Audio is paced like the media path paces it (20 ms
frames on an absolute schedule). Tests with real speech (espeak-ng + sox) are marked `peers`;
the rest use tones, which the fake's energy VAD hears as speech just the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from sipagent.conversation.stt_feed import SttFeed
from sipagent.providers.base import ProviderError, SttEvent, SttEventKind
from sipagent.providers.deepgram_stt import DeepgramSpeechToText
from tests.kit.fakes.deepgram_server import EMPTY_AUDIO, FakeDeepgramServer, frame_is_speech
from tests.kit.peerlib.audio import CALLER_TEXT, AudioLibrary, pcm16_to_ulaw, tone_pcm16

FRAME = 160  # 20 ms of 8 kHz mu-law
RATE = 8000
CALLER_SAID = "I'd like to book a cleaning on Tuesday at 3 PM."


def silence(seconds: float) -> bytes:
    return b"\xff" * int(seconds * RATE)  # 0xFF is mu-law zero


def tone(seconds: float, freq: float = 440.0) -> bytes:
    return pcm16_to_ulaw(tone_pcm16(freq, int(seconds * 1000)))


async def stream(stt: DeepgramSpeechToText, audio: bytes, *, speed: float = 1.0) -> list[float]:
    """Send `audio` in 20 ms frames on an absolute schedule (no drift), `speed` x real time.
    Returns the loop.time() at which each frame was handed over."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent_at: list[float] = []
    for index, offset in enumerate(range(0, len(audio), FRAME)):
        delay = start + index * 0.02 / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stt.send_audio(audio[offset : offset + FRAME])
        sent_at.append(loop.time())
    return sent_at


class EventLog:
    """Collects the provider's events as they arrive; tests wait on them."""

    def __init__(self, stt: DeepgramSpeechToText) -> None:
        self.events: list[SttEvent] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect(stt))

    async def _collect(self, stt: DeepgramSpeechToText) -> None:
        try:
            async for event in stt.events():
                self.events.append(event)
                self._changed.set()
        finally:
            self.ended.set()
            self._changed.set()

    def of(self, kind: SttEventKind) -> list[SttEvent]:
        return [e for e in self.events if e.kind == kind]

    async def wait_for(
        self, predicate: Callable[[SttEvent], bool], timeout: float = 5.0
    ) -> SttEvent:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self.ended.is_set():
                    raise AssertionError(f"events ended without a match: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_kind(self, kind: SttEventKind, timeout: float = 5.0, **match: Any) -> SttEvent:
        def predicate(event: SttEvent) -> bool:
            return event.kind == kind and all(getattr(event, k) == v for k, v in match.items())

        return await self.wait_for(predicate, timeout)

    async def stop(self) -> None:
        await asyncio.wait_for(self.ended.wait(), 5.0)
        await self._task


@asynccontextmanager
async def running(
    server: FakeDeepgramServer,
    provider: type[DeepgramSpeechToText] = DeepgramSpeechToText,
    **settings: Any,
) -> AsyncIterator[tuple[DeepgramSpeechToText, EventLog]]:
    stt = provider(server.api_key, ws_url=server.url, **settings)
    await stt.start()
    log = EventLog(stt)
    try:
        yield stt, log
    finally:
        await stt.close()
        await log.stop()


def last_speech_frame(audio: bytes) -> int:
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    return max(i for i, frame in enumerate(frames) if frame_is_speech(frame))


def is_word_prefix(partial: str, full: str) -> bool:
    words = partial.split()
    return words == full.split()[: len(words)]


# ---------------------------------------------------------------------------------------------
# recognition


@pytest.mark.peers
async def test_speech_gives_speech_started_partials_final_and_utterance_end(
    audio: AudioLibrary,
) -> None:
    speech = audio.speech_ulaw(CALLER_TEXT).read_bytes()
    sent = silence(0.5) + speech + silence(1.6)
    async with FakeDeepgramServer([CALLER_SAID], final_latency=0.3) as server:
        async with running(server) as (stt, log):
            sent_at = await stream(stt, sent)
            await log.wait_kind(SttEventKind.UTTERANCE_END)
        conn = server.connections[0]

    kinds = [e.kind for e in log.events]
    assert kinds[0] == SttEventKind.SPEECH_STARTED
    assert kinds[-2:] == [SttEventKind.FINAL, SttEventKind.UTTERANCE_END], kinds
    partials = log.of(SttEventKind.PARTIAL)
    assert len(partials) >= 5
    assert all(is_word_prefix(p.text, CALLER_SAID) for p in partials), [p.text for p in partials]
    counts = [len(p.text.split()) for p in partials]
    assert counts == sorted(counts) and counts[-1] > counts[0]  # words revealed progressively
    (final,) = log.of(SttEventKind.FINAL)
    assert final.text == CALLER_SAID and final.speech_final and final.detail == ""
    assert not log.of(SttEventKind.ERROR)

    # The final comes `final_latency` after the caller's last voiced frame went out (the
    # fake's endpointing window, in real time, is the same 0.3 s).
    latency = final.received_at - sent_at[last_speech_frame(sent)]
    assert 0.25 <= latency <= 0.8, latency

    # What the SDK put on the wire: the parameters the provider chose, the key in the header,
    # every byte of audio, and CloseStream answered with Metadata and a clean close.
    assert conn.query == {
        "model": "nova-3",
        "language": "en-US",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",
        "vad_events": "true",
        "utterance_end_ms": "1000",
        "smart_format": "true",
    }
    assert conn.headers["Authorization"] == f"Token {server.api_key}"
    # No permessage-deflate offered: zlib over mu-law audio was 4 % of the agent's CPU.
    assert "Sec-WebSocket-Extensions" not in conn.headers, conn.headers
    assert bytes(conn.audio) == sent
    assert conn.controls == ["CloseStream"]
    assert conn.sent[-1]["type"] == "Metadata"
    assert conn.closed_by == "close_stream"
    assert log.ended.is_set()  # close() ended events()


async def test_finalize_flushes_the_utterance_in_progress() -> None:
    async with FakeDeepgramServer(["Hello there."]) as server, running(server) as (stt, log):
        sent = silence(0.3) + tone(0.8)  # no trailing silence: the fake cannot endpoint
        await stream(stt, sent, speed=2.0)
        await log.wait_kind(SttEventKind.SPEECH_STARTED)
        await stt.finalize()
        final = await log.wait_kind(SttEventKind.FINAL)
        conn = server.connections[0]
        # Finalize went out after every byte queued before the call.
        assert conn.controls == ["Finalize"]
        assert conn.control_offsets == [len(sent)]

    assert final.text == "Hello there."
    assert final.detail == "from_finalize"
    assert not final.speech_final  # Deepgram's endpointer did not end the turn; we forced it
    (msg,) = [m for m in conn.sent_of_type("Results") if m["is_final"]]
    assert msg["from_finalize"] is True


# ---------------------------------------------------------------------------------------------
# keepalive


async def test_keepalive_keeps_a_silent_stream_open() -> None:
    async with FakeDeepgramServer(["Hello."], idle_timeout=1.0) as server:
        async with running(server, keepalive_interval=0.25) as (stt, log):
            await stream(stt, silence(0.2))
            await asyncio.sleep(2.0)  # the media path sends nothing: longer than idle_timeout
            conn = server.connections[0]
            assert server.connection_count == 1 and conn.closed_by == ""
            assert conn.keepalives >= 5
            # While audio flows there is no need for KeepAlive.
            before = conn.keepalives
            await stream(stt, silence(0.2) + tone(0.6) + silence(0.5))
            assert conn.keepalives == before
            final = await log.wait_kind(SttEventKind.FINAL)
        assert final.text == "Hello." and final.speech_final
        assert server.connection_count == 1
        assert not log.of(SttEventKind.ERROR)


async def test_without_keepalive_the_idle_close_is_survived_by_reconnecting() -> None:
    # The control for the test above: Deepgram's idle timeout really closes the stream, and
    # the provider reports it and carries on on a new connection.
    async with (
        FakeDeepgramServer(["Hello."], idle_timeout=0.6) as server,
        running(server, keepalive_interval=30.0) as (stt, log),
    ):
        await stream(stt, silence(0.1))
        error = await log.wait_kind(SttEventKind.ERROR, timeout=3.0)
        await server.wait_until(lambda: server.connection_count == 2)
        await stream(stt, silence(0.2) + tone(0.6) + silence(0.5), speed=2.0)
        final = await log.wait_kind(SttEventKind.FINAL)
    assert server.connections[0].closed_by == "idle_timeout"
    assert error.detail.startswith("reconnecting:") and "1011" in error.detail
    assert final.text == "Hello."


# ---------------------------------------------------------------------------------------------
# authentication


async def test_wrong_api_key_raises_provider_error_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the websockets handshake logs headers at DEBUG
    secret = "dg-wrong-secret-4f9a1c77e2"
    async with FakeDeepgramServer() as server:
        stt = DeepgramSpeechToText(secret, ws_url=server.url)
        with pytest.raises(ProviderError) as info:
            await stt.start()
        assert server.rejected and server.rejected[0].status == 401
        assert server.connection_count == 0

    err = info.value
    # Why, in Deepgram's own words: the handshake's dg-error header.
    assert "API key (HTTP 401: Invalid credentials.)" in str(err)
    texts = [str(err), repr(err), repr(stt)]
    cause: BaseException | None = err
    while cause is not None:  # the whole chain, as a traceback would print it
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    texts += [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if secret in t]
    # events() ends at once: the stream never opened.
    assert [e async for e in stt.events()] == []
    await stt.close()


async def test_unreachable_server_raises_provider_error() -> None:
    async with FakeDeepgramServer() as server:
        url = server.url
    stt = DeepgramSpeechToText("dg-key", ws_url=url, connect_timeout=2.0)
    with pytest.raises(ProviderError, match="cannot connect"):
        await stt.start()


# ---------------------------------------------------------------------------------------------
# reconnect and replay


async def test_reconnect_replays_the_unfinalized_audio_of_the_turn() -> None:
    first, second = "Yes, that's right.", "Can I come in on Friday morning?"
    # Utterance A is finalized on the first connection; the socket then drops in the middle
    # of utterance B (audio time 3.2 s).
    sent = silence(0.3) + tone(0.8) + silence(1.5) + tone(1.2, 620.0) + silence(1.5)
    async with FakeDeepgramServer([first, second], drop_after_audio_seconds=3.2) as server:
        async with running(server) as (stt, log):
            await stream(stt, sent, speed=2.0)
            await log.wait_kind(SttEventKind.FINAL, text=second)
        conn1, conn2 = server.connections

    finals = log.of(SttEventKind.FINAL)
    assert [(f.text, f.speech_final) for f in finals] == [(first, True), (second, True)]
    (error,) = log.of(SttEventKind.ERROR)
    assert error.detail.startswith("reconnecting:")
    assert log.events.index(finals[0]) < log.events.index(error) < log.events.index(finals[1])
    assert server.finalized == [first, second]  # A was not heard twice

    assert conn1.closed_by == "drop" and len(conn1.audio) >= int(3.2 * RATE)
    assert bytes(conn1.audio) == sent[: len(conn1.audio)]
    # The second connection starts exactly where A's final result ended (start + duration on
    # the first connection's timeline) and carries everything after it: B's first half again,
    # then the rest of the call.
    (final_a,) = [m for m in conn1.sent_of_type("Results") if m["is_final"]]
    committed = round((final_a["start"] + final_a["duration"]) * RATE)
    assert 0 < committed < int(2.6 * RATE)  # inside the pause between A and B
    assert bytes(conn2.audio) == sent[committed:]
    turn_b = sent[int(2.6 * RATE) : len(conn1.audio)]  # what conn1 had heard of B
    assert turn_b in bytes(conn2.audio)


async def test_reconnect_after_a_wall_clock_drop() -> None:
    sent = silence(0.3) + tone(1.2) + silence(1.0)
    async with FakeDeepgramServer(["Okay."], drop_connection_after_seconds=0.7) as server:
        async with running(server) as (stt, log):
            await stream(stt, sent)
            final = await log.wait_kind(SttEventKind.FINAL)
        conn1, conn2 = server.connections
    assert final.text == "Okay." and final.speech_final
    assert conn1.closed_by == "drop"
    assert len(log.of(SttEventKind.ERROR)) == 1
    # Nothing had been finalized: the second connection got the whole call from byte 0.
    assert bytes(conn2.audio) == sent


@pytest.mark.peers
async def test_reconnect_mid_sentence_still_delivers_the_whole_sentence(
    audio: AudioLibrary,
) -> None:
    speech = audio.speech_ulaw(CALLER_TEXT).read_bytes()
    sent = silence(0.5) + speech + silence(1.0)
    async with FakeDeepgramServer([CALLER_SAID], drop_after_audio_seconds=2.0) as server:
        async with running(server) as (stt, log):
            await stream(stt, sent)
            final = await log.wait_kind(SttEventKind.FINAL)
        conn1, conn2 = server.connections
    assert final.text == CALLER_SAID and final.speech_final
    assert conn1.closed_by == "drop" and conn1.sent_of_type("SpeechStarted")
    assert bytes(conn1.audio) == sent[: len(conn1.audio)]
    assert bytes(conn2.audio) == sent  # the turn's audio from its very start, then the rest
    kinds = [e.kind for e in log.events]
    assert kinds.index(SttEventKind.ERROR) < kinds.index(SttEventKind.FINAL)


async def test_parameters_deepgram_refuses_raise_provider_error() -> None:
    async with FakeDeepgramServer() as server:
        # Without utterance_end_ms the SDK leaves the parameter out; the fake insists on it.
        stt = DeepgramSpeechToText(server.api_key, ws_url=server.url, utterance_end_ms=None)
        with pytest.raises(
            ProviderError, match=r"parameters \(HTTP 400: missing .*utterance_end_ms"
        ):
            await stt.start()
        assert server.rejected[0].status == 400 and "utterance_end_ms" in server.rejected[0].reason


async def test_out_of_credit_is_said_and_never_retried() -> None:
    async with FakeDeepgramServer(["Hello."], drop_connection_after_seconds=0.3) as server:
        stt = DeepgramSpeechToText(server.api_key, ws_url=server.url)
        await stt.start()
        log = EventLog(stt)
        server.out_of_credit = True  # the account runs dry; the connection then drops
        await stream(stt, silence(0.6))
        await asyncio.wait_for(log.ended.wait(), 10.0)
        errors = [e.detail for e in log.of(SttEventKind.ERROR)]
        assert [r.status for r in server.rejected] == [402]  # one attempt, not five
        await stt.close()
        await log.stop()
    assert errors[-1].startswith("gave up: Deepgram: out of credit (HTTP 402: Project does not")


async def test_gives_up_when_the_server_stays_away() -> None:
    server = FakeDeepgramServer(["Hello."])
    await server.start()
    stt = DeepgramSpeechToText(server.api_key, ws_url=server.url, max_reconnect_attempts=2)
    await stt.start()
    log = EventLog(stt)
    await stream(stt, silence(0.2))
    await server.stop()  # the connection dies and the port refuses from now on
    await asyncio.wait_for(log.ended.wait(), 10.0)
    errors = [e.detail for e in log.of(SttEventKind.ERROR)]
    assert len(errors) == 4, errors  # the drop, two failed attempts, then the last one
    assert all(d.startswith("reconnecting:") for d in errors[:-1])
    assert errors[-1].startswith("gave up:") and "cannot connect" in errors[-1]
    stt.send_audio(silence(0.02))  # harmless after the end
    await stt.close()
    await log.stop()


# ---------------------------------------------------------------------------------------------
# one SDK client per process


async def test_calls_share_one_sdk_client_each_with_its_own_websocket() -> None:
    """The factory builds the Deepgram SDK client once (an httpx client and an SSL context:
    ~60 ms of loop CPU each time) and gives it to every call's stream."""
    from sipagent.config import AgentSettings
    from sipagent.providers.factory import build_providers

    async with FakeDeepgramServer(["Hello there.", "Good morning."]) as server:
        providers = build_providers(
            AgentSettings(  # type: ignore[call-arg]
                _env_file=None, stt="deepgram", llm="offline", tts="offline",
                deepgram_api_key=server.api_key, deepgram_url=server.url,
            )
        )  # fmt: skip
        first, second = providers.new_stt(), providers.new_stt()
        assert isinstance(first, DeepgramSpeechToText)
        assert isinstance(second, DeepgramSpeechToText)
        assert first.client is second.client
        await asyncio.gather(first.start(), second.start())
        logs = [EventLog(first), EventLog(second)]
        await asyncio.gather(
            stream(first, silence(0.3) + tone(0.8) + silence(0.6), speed=2.0),
            stream(second, silence(0.3) + tone(0.8) + silence(0.6), speed=2.0),
        )
        finals = [await log.wait_kind(SttEventKind.FINAL) for log in logs]
        await asyncio.gather(first.close(), second.close())
        for log in logs:
            await log.stop()
        assert len(server.connections) == 2
        assert sorted(f.text for f in finals) == ["Good morning.", "Hello there."]


# ---------------------------------------------------------------------------------------------
# batching (conversation/stt_feed.py)


async def stream_batched(
    stt: DeepgramSpeechToText, audio: bytes, *, speed: float = 1.0
) -> tuple[list[float], SttFeed]:
    """`stream`, but through the conversation's SttFeed with the fake's own VAD deciding what is
    voiced (as webrtcvad does in the conversation)."""
    loop = asyncio.get_running_loop()
    feed = SttFeed(stt, loop.time)
    start = loop.time()
    sent_at: list[float] = []
    for index, offset in enumerate(range(0, len(audio), FRAME)):
        delay = start + index * 0.02 / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = audio[offset : offset + FRAME]
        feed.push(frame, frame_is_speech(frame))
        sent_at.append(loop.time())
    return sent_at, feed


async def test_batched_audio_is_fewer_messages_with_the_same_transcript_and_endpoint() -> None:
    sent = silence(1.0) + tone(0.8) + silence(1.5)
    results = {}
    for batch_ms in (0, 80):
        async with FakeDeepgramServer(["Hello there."], final_latency=0.3) as server:
            async with running(server, audio_batch_ms=batch_ms) as (stt, log):
                feed = None
                if batch_ms:
                    sent_at, feed = await stream_batched(stt, sent)
                else:
                    sent_at = await stream(stt, sent)
                final = await log.wait_kind(SttEventKind.FINAL)
                await log.wait_kind(SttEventKind.UTTERANCE_END)
                if feed is not None:
                    feed.close()  # as the conversation does before closing the STT
            conn = server.connections[0]
            if feed is not None:
                # The sender may join batches that queue up while it is busy, never split one.
                assert len(conn.audio_messages) <= feed.messages
        results[batch_ms] = (final, final.received_at - sent_at[last_speech_frame(sent)], conn)

    (plain, plain_latency, plain_conn), (batched, batched_latency, batched_conn) = (
        results[0],
        results[80],
    )
    assert bytes(batched_conn.audio) == bytes(plain_conn.audio) == sent
    assert plain_conn.audio_messages == [FRAME] * (len(sent) // FRAME)
    # Silence away from speech went out 80 ms at a time; the tone (40 voiced frames) and the
    # tail after it (endpointing 300 ms + 200 ms: 25 frames) frame by frame, as they came; a
    # sender that falls behind under load joins a few of those.
    assert len(batched_conn.audio_messages) < 0.6 * len(plain_conn.audio_messages)
    assert max(batched_conn.audio_messages) == 640
    assert batched_conn.audio_messages.count(FRAME) >= 50
    assert batched.text == plain.text == "Hello there." and batched.speech_final
    # The end of the turn is not delayed: the last voiced frame went out when it came.
    assert 0.25 <= batched_latency <= 0.8, batched_latency
    assert batched_latency - plain_latency < 0.1, (batched_latency, plain_latency)
    assert batched_conn.controls == ["CloseStream"]


async def test_close_sends_the_partial_batch_before_close_stream() -> None:
    async with FakeDeepgramServer(["Hello."]) as server:
        async with running(server) as (stt, _log):
            loop = asyncio.get_running_loop()
            feed = SttFeed(stt, loop.time)
            for _ in range(3):  # 60 ms: less than a batch, nothing sent yet
                feed.push(silence(0.02), False)
            assert feed.messages == 0
            feed.close()
        conn = server.connections[0]
    assert conn.audio_messages == [480]
    assert conn.controls == ["CloseStream"] and conn.control_offsets == [480]


async def test_the_fake_ends_the_stream_on_an_empty_audio_message_as_deepgram_does() -> None:
    # So a client that sent one (a batcher flushing nothing) would fail the tests above.
    async with FakeDeepgramServer(["Hello."]) as server, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Token {server.api_key}"}
        query = "encoding=mulaw&sample_rate=8000&interim_results=true&endpointing=300"
        query += "&vad_events=true&utterance_end_ms=1000&smart_format=true"
        async with session.ws_connect(f"{server.url}/v1/listen?{query}", headers=headers) as ws:
            await ws.send_bytes(silence(0.1))
            await ws.send_bytes(b"")
            types = [json.loads(msg.data)["type"] async for msg in ws]
        conn = server.connections[0]
    assert types[-1] == "Metadata" and ws.close_code == 1000
    assert conn.controls == [EMPTY_AUDIO] and conn.control_offsets == [800]
    assert conn.closed_by == "close_stream"


async def test_batched_audio_is_replayed_on_reconnect_from_the_last_final() -> None:
    first, second = "Book me in.", "Tuesday please."
    sent = silence(0.3) + tone(0.8) + silence(1.5) + tone(1.2, 620.0) + silence(1.5)
    async with FakeDeepgramServer([first, second], drop_after_audio_seconds=3.2) as server:
        async with running(server) as (stt, log):
            _, feed = await stream_batched(stt, sent, speed=2.0)
            await log.wait_kind(SttEventKind.FINAL, text=second)
            feed.close()
        conn1, conn2 = server.connections

    finals = log.of(SttEventKind.FINAL)
    assert [(f.text, f.speech_final) for f in finals] == [(first, True), (second, True)]
    assert server.finalized == [first, second]  # A was not heard twice
    assert conn1.closed_by == "drop" and bytes(conn1.audio) == sent[: len(conn1.audio)]
    assert max(conn1.audio_messages) == 640  # it was batched
    (final_a,) = [m for m in conn1.sent_of_type("Results") if m["is_final"]]
    committed = round((final_a["start"] + final_a["duration"]) * RATE)
    assert 0 < committed < int(2.6 * RATE)
    assert bytes(conn2.audio) == sent[committed:]  # from A's final on, nothing lost or doubled
