"""ElevenLabsTextToSpeech: the real `elevenlabs` SDK against a fake server on loopback HTTP.

The fake streams deterministic mu-law (`expected_audio`) in chunked transfer encoding, so every
test can check byte for byte what a caller would have heard. "Streaming, not buffering" is
proven from the server's record (how much it had sent when the provider yielded), never from a
stopwatch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from elevenlabs import VoiceSettings

from sipagent.providers.base import ProviderError
from sipagent.providers.elevenlabs_tts import ElevenLabsTextToSpeech
from tests.kit.fakes.elevenlabs_server import (
    FakeElevenLabsServer,
    audio_duration_ms,
    expected_audio,
)

VOICE = "21m00Tcm4TlvDq8ikWAM"
SENTENCE = "Thanks for calling Bright Smile Dental, how can I help you today?"


def make_tts(server: FakeElevenLabsServer, **kwargs: Any) -> ElevenLabsTextToSpeech:
    return ElevenLabsTextToSpeech(
        api_key=server.api_key, voice_id=VOICE, base_url=server.base_url, **kwargs
    )


async def speak(tts: ElevenLabsTextToSpeech, text: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text)]


def test_expected_audio_is_deterministic_never_silent_and_sized_by_text() -> None:
    short, long = expected_audio("Hi"), expected_audio(SENTENCE)
    assert len(short) == 8 * 200  # the 200 ms minimum
    assert len(long) == 8 * 55 * len(SENTENCE) == 8 * audio_duration_ms(SENTENCE)
    assert expected_audio(SENTENCE) == long and expected_audio(SENTENCE + "!") != long
    assert 0xFF not in long and 0x7F not in long


async def test_audio_is_what_the_service_produced_and_the_request_is_right() -> None:
    async with FakeElevenLabsServer() as server:
        tts = make_tts(server)
        try:
            chunks = await speak(tts, SENTENCE)
        finally:
            await tts.aclose()
    assert b"".join(chunks) == expected_audio(SENTENCE)
    assert len(chunks) > 1
    (rec,) = server.requests
    assert rec.path == f"/v1/text-to-speech/{VOICE}/stream"
    assert rec.query == {"output_format": "ulaw_8000"}
    assert rec.headers["xi-api-key"] == server.api_key
    assert rec.body == {"text": SENTENCE, "model_id": "eleven_turbo_v2_5"}
    assert rec.completed and not rec.disconnected


async def test_model_voice_settings_and_latency_option_are_sent() -> None:
    async with FakeElevenLabsServer() as server:
        tts = make_tts(
            server,
            model_id="eleven_flash_v2_5",
            optimize_streaming_latency=3,
            voice_settings={"stability": 0.4, "similarity_boost": 0.8, "speed": 1.1},
        )
        typed = make_tts(server, voice_settings=VoiceSettings(stability=0.9))
        try:
            assert b"".join(await speak(tts, "Okay.")) == expected_audio("Okay.")
            assert b"".join(await speak(typed, "Sure.")) == expected_audio("Sure.")
        finally:
            await tts.aclose()
            await typed.aclose()
    first, second = server.requests
    assert first.query == {"output_format": "ulaw_8000", "optimize_streaming_latency": "3"}
    assert first.body == {
        "text": "Okay.",
        "model_id": "eleven_flash_v2_5",
        "voice_settings": {"stability": 0.4, "similarity_boost": 0.8, "speed": 1.1},
    }
    assert second.body["voice_settings"] == {"stability": 0.9}


async def test_first_chunk_is_yielded_while_the_server_is_still_sending() -> None:
    # Slower than real time (0.2 s between chunks of a 35 s reply): the first chunk is out
    # long before the rest, so the checks below cannot pass by a lucky race.
    async with FakeElevenLabsServer(speed=0.1) as server:
        tts = make_tts(server)
        try:
            gen = tts.synthesize(SENTENCE)
            first = await anext(gen)
            rec = server.requests[0]
            assert first == expected_audio(SENTENCE)[: len(first)]
            assert not rec.completed and rec.bytes_sent < rec.bytes_planned
            # Passed on as it came, not held back until the SDK's default 1024-byte chunk fills.
            assert len(first) < 1024
            await gen.aclose()
        finally:
            await tts.aclose()


async def test_consecutive_sentences_on_one_instance() -> None:
    sentences = ["Of course.", "Let me look that up.", "You're booked for Friday at ten thirty."]
    async with FakeElevenLabsServer(speed=None) as server:
        tts = make_tts(server)
        try:
            heard = [b"".join(await speak(tts, s)) for s in sentences]
        finally:
            await tts.aclose()
    assert heard == [expected_audio(s) for s in sentences]
    assert [r.text for r in server.requests] == sentences


async def test_blank_text_makes_no_request() -> None:
    async with FakeElevenLabsServer() as server:
        tts = make_tts(server)
        try:
            assert await speak(tts, "  ") == []
        finally:
            await tts.aclose()
    assert server.requests == []


@pytest.mark.parametrize("forced", [False, True])
async def test_401_is_a_provider_error_without_the_key(forced: bool) -> None:
    async with FakeElevenLabsServer() as server:
        key = "xi-wrong-key-0123456789abcdef"
        if forced:
            server.fail_next(401)
            key = server.api_key
        tts = ElevenLabsTextToSpeech(api_key=key, voice_id=VOICE, base_url=server.base_url)
        try:
            with pytest.raises(ProviderError) as err:
                await speak(tts, SENTENCE)
        finally:
            await tts.aclose()
    message = str(err.value)
    assert "HTTP 401: invalid_api_key: Invalid API key" in message
    assert key not in message and err.value.__cause__ is None
    assert err.value.heals is False
    assert server.requests[0].status == 401


async def refusal(prepare: Callable[[FakeElevenLabsServer], None]) -> ProviderError:
    """The ProviderError a sentence gets from a fake set up by `prepare`."""
    async with FakeElevenLabsServer() as server:
        prepare(server)
        tts = make_tts(server)
        try:
            with pytest.raises(ProviderError) as err:
                await speak(tts, SENTENCE)
        finally:
            await tts.aclose()
    return err.value


def out_of_credit(server: FakeElevenLabsServer) -> None:
    server.credits = 12


def without_the_voice(server: FakeElevenLabsServer) -> None:
    server.voices = {"another-voice"}


@pytest.mark.parametrize(
    ("prepare", "words"),
    [
        (out_of_credit, "HTTP 401: quota_exceeded: This request exceeds your quota"),
        (without_the_voice, f"HTTP 404: voice_not_found: A voice with the voice_id {VOICE}"),
    ],
)
async def test_errors_that_cannot_heal_quote_the_service_and_say_so(
    prepare: Callable[[FakeElevenLabsServer], None], words: str
) -> None:
    error = await refusal(prepare)
    assert words in str(error) and "authentication" not in str(error)
    assert error.heals is False


async def test_one_request_over_the_plans_concurrency_is_refused_with_a_429_that_heals() -> None:
    async with FakeElevenLabsServer(concurrency_limit=1, first_byte_latency=0.5) as server:
        tts = make_tts(server)
        try:
            results = await asyncio.gather(
                speak(tts, SENTENCE), speak(tts, "Second."), return_exceptions=True
            )
        finally:
            await tts.aclose()
    [error] = [r for r in results if isinstance(r, ProviderError)]
    assert "HTTP 429: too_many_concurrent_requests: Too many concurrent requests" in str(error)
    assert error.heals is True
    assert sorted(r.status for r in server.requests) == [200, 429]


async def test_the_neighbouring_sentences_are_sent_with_the_text() -> None:
    async with FakeElevenLabsServer() as server:
        tts = make_tts(server)
        try:
            audio = b"".join(
                [
                    chunk
                    async for chunk in tts.synthesize(
                        "It is at ten.", previous_text="Your visit is booked.", next_text="Bye!"
                    )
                ]
            )
            await speak(tts, "Hello.")
        finally:
            await tts.aclose()
    assert audio == expected_audio("It is at ten.")
    first, alone = (request.body for request in server.requests)
    assert (first["previous_text"], first["next_text"]) == ("Your visit is booked.", "Bye!")
    assert "previous_text" not in alone and "next_text" not in alone


async def test_500_is_a_provider_error() -> None:
    async with FakeElevenLabsServer() as server:
        server.fail_next(500)
        tts = make_tts(server)
        try:
            with pytest.raises(ProviderError, match="HTTP 500: internal_error: Synthesis failed"):
                await speak(tts, SENTENCE)
            # The failure was for that request only; the next sentence is spoken normally.
            assert b"".join(await speak(tts, "Sorry.")) == expected_audio("Sorry.")
        finally:
            await tts.aclose()


async def test_stream_dropped_mid_reply_is_a_provider_error_after_the_audio_so_far() -> None:
    async with FakeElevenLabsServer(drop_after_bytes=1000) as server:
        tts = make_tts(server)
        heard = bytearray()
        try:
            with pytest.raises(ProviderError, match="stream failed"):
                async for chunk in tts.synthesize(SENTENCE):
                    heard += chunk
        finally:
            await tts.aclose()
    assert bytes(heard) == expected_audio(SENTENCE)[:1000]


async def test_no_first_byte_times_out_and_hangs_up() -> None:
    async with FakeElevenLabsServer(first_byte_latency=30.0) as server:
        tts = make_tts(server, first_byte_timeout=0.3)
        try:
            with pytest.raises(ProviderError, match="before the first audio"):
                await speak(tts, SENTENCE)
            rec = await server.wait_finished()
        finally:
            await tts.aclose()
    assert rec.disconnected and rec.bytes_sent == 0


async def test_aclose_mid_reply_cancels_the_request() -> None:
    async with FakeElevenLabsServer(speed=1.0) as server:
        tts = make_tts(server)
        try:
            gen = tts.synthesize(SENTENCE)
            await anext(gen)
            await gen.aclose()
            rec = await server.wait_finished()
        finally:
            await tts.aclose()
    assert rec.disconnected and not rec.completed
    assert rec.bytes_sent < rec.bytes_planned


async def test_cancelling_the_consumer_cancels_the_request() -> None:
    async with FakeElevenLabsServer(speed=1.0) as server:
        tts = make_tts(server)
        got_audio = asyncio.Event()

        async def play() -> None:
            async for _ in tts.synthesize(SENTENCE):
                got_audio.set()

        task = asyncio.create_task(play())
        try:
            await asyncio.wait_for(got_audio.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rec = await server.wait_finished()
        finally:
            await tts.aclose()
    assert rec.disconnected and not rec.completed


def test_missing_key_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="no API key"):
        ElevenLabsTextToSpeech(voice_id=VOICE)


async def test_an_idle_connection_outlives_httpx_five_second_default() -> None:
    # The caller's turn between two replies is often longer than httpx's 5 s keep-alive: the
    # next reply must not wait for a new connection (a TLS handshake, against the real API).
    async with FakeElevenLabsServer(speed=None) as server:
        tts = make_tts(server)
        try:
            await speak(tts, "Hello.")
            await asyncio.sleep(5.6)
            await speak(tts, "Hello again.")
        finally:
            await tts.aclose()
    first, second = server.requests
    assert first.completed and second.completed
    assert second.client_port == first.client_port
