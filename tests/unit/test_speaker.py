"""The speaker on its own: sentence order, the moment the reply becomes audible, fallback
voices, and nothing played once the reply is cut; it reaches its owner only through the
callbacks it was given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sipagent.conversation.failures import ProviderFailures
from sipagent.conversation.speaker import Reply, Speaker, Voices
from sipagent.conversation.turns import TurnTimings
from sipagent.observability.events import EventBus
from sipagent.providers.base import ProviderError, TextToSpeech
from tests.kit.conversation_standins import InstantTts


class Line:
    """Where the speaker's audio goes, and what happened in which order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.audio = bytearray()
        self.talkspurt: float | None = None
        self.now = 100.0

    def play(self, mulaw: bytes) -> None:
        self.events.append(f"play {mulaw[:1].decode()}")
        self.audio += mulaw
        self.talkspurt = self.now  # a quiet line: play() sends at once

    def audible(self) -> None:
        self.events.append("audible")

    def end_talkspurt(self) -> None:
        self.events.append("end")

    async def first_packet_sent(self, previous: float | None) -> float | None:
        return self.talkspurt


def speaker_for(line: Line, voices: Voices, reply: Reply | None = None) -> Speaker:
    return Speaker(
        reply or Reply(0.0, TurnTimings(), history_start=1),
        voices,
        play=line.play,
        end_talkspurt=line.end_talkspurt,
        talkspurt_started=lambda: line.talkspurt,
        first_packet_sent=line.first_packet_sent,
        clock=lambda: line.now,
        on_audible=line.audible,
    )


def voices(tts: TextToSpeech, fallback: TextToSpeech | None = None) -> Voices:
    return Voices(tts, fallback, None, ProviderFailures("c1", EventBus()))


class SlowFirstTts:
    """The first sentence's audio comes only when `first` is set; the rest at once."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.calls = 0

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.calls += 1
        if self.calls == 1:
            await self.first.wait()
        yield text[:1].encode() * 160  # "One." sounds like O


async def test_sentences_play_in_order_even_when_a_later_one_is_ready_first() -> None:
    line, tts = Line(), SlowFirstTts()
    speaker = speaker_for(line, voices(tts))
    speaker.say("One.")
    speaker.say("Two.")
    for _ in range(10):
        await asyncio.sleep(0)
    assert tts.calls == 2 and line.audio == b""  # the second is synthesised, not played
    tts.first.set()
    await speaker.finish()
    await speaker.close()
    # The reply's end is said once, after its last audio: its silence is not an underrun.
    assert line.events == ["play O", "audible", "play T", "end"]
    assert speaker.reply.timings.first_reply_packet == 100.0
    assert speaker.reply.timings.tts_first_byte == 100.0
    assert [c.audio_ms for c in speaker.reply.chunks] == [20.0, 20.0]


async def test_a_cut_reply_plays_nothing_more() -> None:
    line, tts = Line(), SlowFirstTts()
    speaker = speaker_for(line, voices(tts))
    speaker.say("One.")
    for _ in range(5):
        await asyncio.sleep(0)
    speaker.reply.cut = True  # the caller interrupted; the line was flushed
    tts.first.set()
    await speaker.finish()
    await speaker.close()
    assert line.audio == b"" and "audible" not in line.events
    assert "end" not in line.events  # the flush ended it; nothing to ease out


class FailingTts:
    def __init__(self, error: ProviderError) -> None:
        self.error = error
        self.texts: list[str] = []

    async def synthesize(self, text: str, **context: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        raise self.error
        yield b""


async def test_a_failed_sentence_is_said_in_the_fallback_voice() -> None:
    line, fallback = Line(), InstantTts()
    tts = FailingTts(ProviderError("TTS: HTTP 500"))
    chosen = voices(tts, fallback)
    speaker = speaker_for(line, chosen)
    speaker.say("One.")
    await speaker.finish()
    await speaker.close()
    assert fallback.texts == ["One."] and line.audio
    assert chosen.failures.errors == ["tts: TTS: HTTP 500"]
    assert chosen.failures.usable("tts")  # it may heal: the next sentence tries it again


async def test_a_tts_that_cannot_heal_is_not_asked_again() -> None:
    line, fallback = Line(), InstantTts()
    tts = FailingTts(ProviderError("TTS: HTTP 401", heals=False))
    chosen = voices(tts, fallback)
    first = speaker_for(line, chosen)
    first.say("One.")
    await first.finish()
    await first.close()
    second = speaker_for(line, chosen)
    second.say("Two.")
    await second.finish()
    await second.close()
    assert tts.texts == ["One."] and fallback.texts == ["One.", "Two."]
    assert not chosen.failures.usable("tts")
