"""EspeakTextToSpeech: libespeak-ng from the espeakng-loader wheel, 8 kHz mu-law, streamed."""

from __future__ import annotations

import asyncio
import audioop
import time

import pytest

from sipagent.providers import offline_tts
from sipagent.providers.base import ProviderError
from sipagent.providers.offline_tts import EspeakTextToSpeech

SENTENCE = "I'd like to book a cleaning for next Tuesday at three pm."
# Long enough that synthesis takes tens of milliseconds even at ~1000x real time.
LONG_TEXT = " ".join(
    f"Sentence number {i}: your appointment is confirmed for Tuesday at three pm, thank you."
    for i in range(60)
)


async def collect(tts: EspeakTextToSpeech, text: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text)]


async def test_sentence_is_8khz_mulaw_of_plausible_duration():
    chunks = await collect(EspeakTextToSpeech(), SENTENCE)
    audio = b"".join(chunks)
    seconds = len(audio) / 8000
    # 12 words at ~165 words per minute is ~4.4 s; espeak runs a little faster than nominal.
    assert 2.0 < seconds < 7.0, seconds
    pcm = audioop.ulaw2lin(audio, 2)
    # Real speech level for 16-bit samples (8-bit audio pushed through as 16-bit would be
    # ~256x quieter), with peaks well above the noise floor.
    assert audioop.rms(pcm, 2) > 1000
    assert audioop.max(pcm, 2) > 8000
    # mu-law silence is 0xFF/0x7F: the pauses around and inside the sentence are there, and
    # speech is most of it.
    silent = sum(b in (0xFF, 0x7F) for b in audio)
    assert 0 < silent < len(audio) // 2


async def test_rate_changes_duration():
    slow = b"".join(await collect(EspeakTextToSpeech(rate=120), SENTENCE))
    fast = b"".join(await collect(EspeakTextToSpeech(rate=300), SENTENCE))
    assert len(fast) < 0.6 * len(slow)


def signature(audio: bytes) -> tuple[float, float]:
    """(seconds, zero crossings per second): duration follows the rate, crossings the voice.

    Not a byte comparison: libespeak-ng carries a pitch-flutter phase and rand() noise from
    one synthesis to the next, so the same sentence never comes out byte-identical twice.
    """
    seconds = len(audio) / 8000
    return seconds, audioop.cross(audioop.ulaw2lin(audio, 2), 2) / seconds


def close_to(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) <= 0.03 * b[0] and abs(a[1] - b[1]) <= 0.08 * b[1]


async def test_voice_changes_the_sound():
    female = signature(b"".join(await collect(EspeakTextToSpeech(voice="en-us+f3"), SENTENCE)))
    again = signature(b"".join(await collect(EspeakTextToSpeech(voice="en-us+f3"), SENTENCE)))
    male = signature(b"".join(await collect(EspeakTextToSpeech(voice="en-us"), SENTENCE)))
    assert close_to(again, female)
    # The female variant's higher pitch and formants: ~2200 vs ~1630 crossings per second.
    assert female[1] > 1.15 * male[1], (female, male)


async def test_chunks_arrive_incrementally():
    tts = EspeakTextToSpeech()
    await tts.warm_up()
    loop = asyncio.get_running_loop()
    started = loop.time()
    arrivals: list[float] = []
    sizes: list[int] = []
    async for chunk in tts.synthesize(LONG_TEXT):
        arrivals.append(loop.time() - started)
        sizes.append(len(chunk))
    total = arrivals[-1]
    assert len(arrivals) > 100
    # ~60 ms buffers: a few RTP packets each, never the whole utterance in one piece.
    assert max(sizes) <= 1000
    # The first chunk is handed over while the rest is still being synthesised.
    assert arrivals[0] < 0.05
    assert arrivals[0] < total / 4, (arrivals[0], total)


async def test_two_sentences_in_parallel_do_not_interfere():
    a = EspeakTextToSpeech(voice="en-us+f3")
    b = EspeakTextToSpeech(voice="en-us", rate=200)
    text_b = "My phone number is five five five zero one two three."
    expected_a = b"".join(await collect(a, SENTENCE))
    expected_b = b"".join(await collect(b, text_b))
    results = await asyncio.gather(
        collect(a, SENTENCE), collect(b, text_b), collect(a, SENTENCE), collect(b, text_b)
    )
    # espeak's voice and rate are process-global: serialised calls keep each one's own
    # (swapped voices differ by ~30% in crossings, swapped rates by ~20% in duration).
    got = [signature(b"".join(r)) for r in results]
    want = [signature(expected_a), signature(expected_b)] * 2
    assert all(close_to(g, w) for g, w in zip(got, want, strict=True)), (got, want)


async def test_aclose_early_stops_synthesis():
    tts = EspeakTextToSpeech()
    await tts.warm_up()
    t0 = time.perf_counter()
    full = await collect(tts, LONG_TEXT)
    full_time = time.perf_counter() - t0

    t0 = time.perf_counter()
    stream = tts.synthesize(LONG_TEXT)
    first = await anext(stream)
    await stream.aclose()
    cancel_time = time.perf_counter() - t0
    assert first == full[0]
    # aclose() returns once the worker has stopped: the engine is free again at once...
    assert offline_tts._LOCK.acquire(blocking=False)
    offline_tts._LOCK.release()
    # ...and it stopped long before the whole text was synthesised.
    assert cancel_time < full_time / 3, (cancel_time, full_time)
    # The engine still works afterwards.
    assert b"".join(await collect(tts, "Goodbye.")) != b""


async def test_cancelling_the_consumer_task_stops_synthesis():
    tts = EspeakTextToSpeech()
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in tts.synthesize(LONG_TEXT):
            got_first.set()
            await asyncio.sleep(1)  # a slow consumer (paced playout)

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b"".join(await collect(tts, "Still working.")) != b""


async def test_empty_text_yields_nothing():
    assert await collect(EspeakTextToSpeech(), "   ") == []


async def test_unknown_voice_is_a_provider_error():
    with pytest.raises(ProviderError, match="no voice"):
        await collect(EspeakTextToSpeech(voice="no-such-voice-xyz"), SENTENCE)
    # ... and does not break the shared engine for the next caller.
    assert b"".join(await collect(EspeakTextToSpeech(), "Hello.")) != b""


def test_rejects_out_of_range_parameters():
    with pytest.raises(ValueError):
        EspeakTextToSpeech(rate=10)
    with pytest.raises(ValueError):
        EspeakTextToSpeech(pitch=150)
