"""AudioBatcher (caller frames into STT messages) and its asyncio adapter SttFeed."""

from __future__ import annotations

import asyncio

from sipagent.conversation.stt_feed import AudioBatcher, SttFeed, batcher_for
from sipagent.providers.deepgram_flux_stt import DeepgramFluxSpeechToText
from sipagent.providers.deepgram_stt import DeepgramSpeechToText

FRAME = 160
SILENT = b"\xff" * FRAME
VOICE = b"\x10" * FRAME


def frames(batcher: AudioBatcher, pattern: str, start: float = 0.0) -> list[bytes | None]:
    """Push one 20 ms frame per character ('v' voiced, '.' silent); what each push returned."""
    out = []
    for index, kind in enumerate(pattern):
        voiced = kind == "v"
        out.append(batcher.push(VOICE if voiced else SILENT, voiced, start + index * 0.02))
    return out


def sizes(messages: list[bytes | None]) -> list[int]:
    return [len(m) if m is not None else 0 for m in messages]


def test_silence_goes_out_in_full_batches() -> None:
    batcher = AudioBatcher(batch_bytes=640, tail_bytes=0, max_delay=0.16)
    assert sizes(frames(batcher, "........")) == [0, 0, 0, 640, 0, 0, 0, 640]
    assert batcher.pending_bytes == 0 and batcher.deadline is None


def test_voice_goes_out_at_once_and_the_silence_after_it_frame_by_frame() -> None:
    batcher = AudioBatcher(batch_bytes=640, tail_bytes=320, max_delay=0.16)
    out = frames(batcher, "..vvv" + "....")
    # Silence waiting when the caller starts speaking goes out with the first voiced frame;
    # voiced frames are never held (the turn's last words reach the recogniser at once), and
    # the tail (320 bytes) goes frame by frame.
    assert sizes(out) == [0, 0, 480, 160, 160, 160, 160, 0, 0]
    assert out[2] == SILENT * 2 + VOICE
    # Past the tail, silence is batched again.
    assert sizes(frames(batcher, "..")) == [0, 640]


def test_voice_after_a_tail_starts_a_new_tail() -> None:
    batcher = AudioBatcher(batch_bytes=640, tail_bytes=160, max_delay=0.16)
    out = frames(batcher, "v." + "vvvv" + ".." + "....")
    assert sizes(out) == [160, 160, 160, 160, 160, 160, 160, 0, 0, 0, 640, 0]


def test_every_byte_comes_out_once_in_order() -> None:
    batcher = AudioBatcher(batch_bytes=480, tail_bytes=320, max_delay=1.0)
    pattern = "..vv.v....vvvvvvv......v." * 3
    sent = b"".join(m for m in frames(batcher, pattern) if m is not None)
    sent += batcher.flush() or b""
    expected = b"".join(VOICE if kind == "v" else SILENT for kind in pattern)
    assert sent == expected


def test_a_batch_whose_frames_stop_coming_is_due_at_its_deadline() -> None:
    batcher = AudioBatcher(batch_bytes=640, tail_bytes=0, max_delay=0.16)
    assert frames(batcher, "..", start=10.0) == [None, None]
    assert batcher.deadline == 10.16
    assert batcher.due(10.15) is None
    assert batcher.due(10.16) == SILENT * 2
    assert batcher.deadline is None and batcher.due(11.0) is None


def test_flush_hands_out_the_partial_batch_once() -> None:
    batcher = AudioBatcher(batch_bytes=640, tail_bytes=0, max_delay=0.16)
    assert batcher.flush() is None
    frames(batcher, "...")
    assert batcher.flush() == SILENT * 3
    assert batcher.flush() is None


def test_a_batch_of_one_frame_or_less_passes_every_frame_through() -> None:
    batcher = AudioBatcher(batch_bytes=0, tail_bytes=0, max_delay=0.0)
    assert frames(batcher, ".v.") == [SILENT, VOICE, SILENT]
    assert batcher.deadline is None


def test_providers_say_how_they_want_their_audio() -> None:
    v1 = DeepgramSpeechToText("key", endpointing_ms=300)
    batcher = batcher_for(v1)
    assert (batcher.batch_bytes, batcher.tail_bytes, batcher.max_delay) == (640, 4000, 0.16)
    # Without endpointing, UtteranceEnd ends the turn: its window is the tail.
    no_endpointing = DeepgramSpeechToText("key", endpointing_ms=None, utterance_end_ms=1000)
    assert batcher_for(no_endpointing).tail_bytes == 9600
    assert batcher_for(DeepgramSpeechToText("key", audio_batch_ms=0)).batch_bytes == 0
    # Flux cuts its own 80 ms messages; batching above that would only add delay.
    assert batcher_for(DeepgramFluxSpeechToText("key")).batch_bytes == 0
    assert batcher_for(object()).batch_bytes == 0  # type: ignore[arg-type]


class RecordingStt:
    audio_batch_ms = 80
    speech_tail_ms = 0

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_audio(self, mulaw: bytes) -> None:
        self.sent.append(mulaw)


async def test_feed_sends_a_stalled_batch_when_its_deadline_passes() -> None:
    loop = asyncio.get_running_loop()
    stt = RecordingStt()
    feed = SttFeed(stt, loop.time)  # type: ignore[arg-type]
    for _ in range(5):
        feed.push(SILENT, False)
    assert stt.sent == [SILENT * 4]
    await asyncio.sleep(0.12)  # the fifth frame's batch is not due yet (0.16 s)
    assert len(stt.sent) == 1
    await asyncio.sleep(0.1)
    assert stt.sent == [SILENT * 4, SILENT]
    feed.push(SILENT, False)
    feed.close()  # close flushes what waits and stops the timer
    assert stt.sent[-1] == SILENT and feed.messages == 3
    await asyncio.sleep(0.2)
    assert feed.messages == 3
