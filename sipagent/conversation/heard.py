"""What the caller actually heard of an interrupted reply, from the audio really sent.

The playout counts the milliseconds of reply audio that left on the wire; each spoken chunk
knows its text and its audio length. Whole chunks played count fully; the chunk cut off is
counted by the share of its words spoken so far (speech rate is near enough even within a
sentence for the LLM's history — it must not believe the caller heard what they did not).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SpokenChunk:
    text: str
    audio_ms: float = 0.0  # audio produced for it so far (all of it once synthesis finished)


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
