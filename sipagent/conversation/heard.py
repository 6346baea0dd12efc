"""What the caller actually heard of an interrupted reply, from the audio really sent.

The playout counts the milliseconds of reply audio that left on the wire; each spoken chunk
knows its text and its audio length. Whole chunks played count fully; the chunk cut off is
counted by the share of its words spoken so far (speech rate is near enough even within a
sentence for the LLM's history — it must not believe the caller heard what they did not).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpokenChunk:
    text: str
    audio_ms: float = 0.0  # audio produced for it so far (all of it once synthesis finished)
    audio: bytearray = field(default_factory=bytearray)  # that audio, to say it again


def first_unheard_chunk(chunks: list[SpokenChunk], played_ms: float) -> int | None:
    """The index of the first chunk not wholly played after `played_ms` of audio went out (the
    sentence cut off, where saying it again must start), or None when all audio was played."""
    remaining = played_ms
    for index, chunk in enumerate(chunks):
        if remaining < chunk.audio_ms or chunk.audio_ms <= 0:
            return index
        remaining -= chunk.audio_ms
    return None


def heard_text(chunks: list[SpokenChunk], played_ms: float) -> str:
    words_heard: list[str] = []
    remaining = played_ms
    for chunk in chunks:
        words = chunk.text.split()
        if chunk.audio_ms <= 0:
            break
        if remaining >= chunk.audio_ms:
            words_heard += words
            remaining -= chunk.audio_ms
            continue
        share = max(0.0, remaining) / chunk.audio_ms
        words_heard += words[: int(len(words) * share)]
        break
    return " ".join(words_heard)
