"""Sentence chunker: cuts the LLM's token stream into speakable pieces for TTS, as early as
is safe. Pure; fed text deltas, returns finished chunks."""

from __future__ import annotations

import re

# Abbreviations that end in a period without ending the sentence (lower-cased, no dot).
_ABBREVIATION_WORDS = "dr mr mrs ms st jr sr prof vs etc e.g i.e a.m p.m am pm no approx appt dept"
ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|[\n]+")
_ABBREVIATION_BEFORE = re.compile(r"(?:^|[\s(])((?:[A-Za-z]\.)*[A-Za-z]+)\.$")


class SentenceChunker:
    """Emit a chunk at a sentence end once it has `min_chars`; never inside "Dr.", "a.m.",
    "3.30", "$4.50" or a phone number such as "555.123.4567" (a period followed by a digit or
    lower-case letter is not a sentence end either).

    The first chunk may have its own, smaller minimum (`first_min_chars`): the caller is waiting
    for it, while later chunks are synthesised as earlier ones play, so only they are worth
    holding back to give the voice longer phrases. With the same minimum for both, "Sure." would
    wait for the whole next sentence to be generated.
    """

    def __init__(
        self, min_chars: int = 20, max_chars: int = 240, first_min_chars: int | None = None
    ) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_min_chars = min_chars if first_min_chars is None else first_min_chars
        self._buffer = ""
        self._emitted = False

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        chunks: list[str] = []
        while (cut := self._find_cut()) is not None:
            chunk, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if chunk:
                chunks.append(chunk)
                self._emitted = True
        return chunks

    def flush(self) -> list[str]:
        """The rest, at the end of the reply."""
        chunk, self._buffer = self._buffer.strip(), ""
        self._emitted = self._emitted or bool(chunk)
        return [chunk] if chunk else []

    @property
    def pending(self) -> str:
        return self._buffer

    def _find_cut(self) -> int | None:
        text = self._buffer
        min_chars = self.min_chars if self._emitted else self.first_min_chars
        for match in _SENTENCE_END.finditer(text):
            end = match.end()
            if end < min_chars:
                continue
            if self._is_false_end(text, match.start(), end):
                continue
            if end < self.min_chars and not self._is_clear_short_end(text, match.start(), end):
                continue
            return end
        if len(text) > self.max_chars:
            # A run-on reply: cut at the last clause boundary so speech can start.
            boundary = max(text.rfind(", ", 0, self.max_chars), text.rfind("; ", 0, self.max_chars))
            if boundary > min_chars:
                return boundary + 1
        return None

    @staticmethod
    def _is_clear_short_end(text: str, start: int, end: int) -> bool:
        """A first chunk shorter than `min_chars` ends only where the end is unambiguous: not
        after an initial or dotted abbreviation ("J.", "U.S.", "a.m."), a number ("1."), or
        punctuation alone ("...")."""
        if sum(char.isalpha() for char in text[:end]) < 2:
            return False
        if text[start] == ".":
            word = _ABBREVIATION_BEFORE.search(text[: start + 1])
            if word and (len(word.group(1)) == 1 or "." in word.group(1)):
                return False
            if start > 0 and text[start - 1].isdigit():
                return False
        return True

    @staticmethod
    def _is_false_end(text: str, start: int, end: int) -> bool:
        if text[start] == "\n":
            return False
        following = text[end:].lstrip()
        if not following:
            return True  # wait: the next delta may continue "3." -> "3.30"
        if following[0].isdigit() or following[0].islower():
            return True  # "3.30", "e.g. this", "a.m. tomorrow"
        if text[start] == ".":
            previous_word = _ABBREVIATION_BEFORE.search(text[: start + 1])
            if previous_word and previous_word.group(1).lower() in ABBREVIATIONS:
                # "Dr. Patel" continues; "... at 3 p.m. See you" is ambiguous: a capital
                # after a time abbreviation usually starts a new sentence.
                return previous_word.group(1).lower() not in {"a.m", "p.m", "am", "pm"}
            if start > 0 and text[start - 1].isdigit() and following[:1].isdigit():
                return True
        return False
