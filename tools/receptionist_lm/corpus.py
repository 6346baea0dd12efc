"""The corpus's sentences, drawn from `corpus.toml`'s templates and slots.

The date and number slots come from the booking rules' vocabulary, so the recogniser can hear
every such word the rules read. Sampling is seeded: the same data gives the same sentences.
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipagent.booking.vocabulary import (
    MONTHS,
    WEEKDAYS,
    clock_hour_words,
    day_of_month_words,
    digit_words,
)

CORPUS_PATH = Path(__file__).resolve().parent / "corpus.toml"

_SLOT = re.compile(r"\{(\w+)\}")


def vocabulary_slots() -> dict[str, list[str]]:
    """The slots the booking rules' vocabulary provides."""
    return {
        "weekday": list(WEEKDAYS),
        "month": list(MONTHS),
        "ordinal": day_of_month_words(),
        "hour": clock_hour_words(),
        "digit": digit_words(),
    }


def spoken_phone_number(rng: random.Random, digits: Sequence[str]) -> str:
    """A phone number (or the part of one a caller repeats) said digit by digit."""
    words = [rng.choice(digits) for _ in range(rng.choice([7, 10, 10, 4, 3]))]
    if rng.random() < 0.3:  # the classic fictional exchange, said as digits
        words = ["five", "five", "five", *words[3:]]
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class Slot:
    """One of `values` is chosen; the `draw_first` slots are drawn once before the choice and
    mean the same in whichever value is chosen (one hour, said in several ways)."""

    values: tuple[str, ...]
    draw_first: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EveryValue:
    """Each value of `slot` once, said in the template `sentence`."""

    slot: str
    sentence: str


class CorpusGrammar:
    """Templates with {slots}, expanded at random: the sentences a language model is
    estimated on. Pure: the random source is seeded."""

    def __init__(
        self,
        templates: Sequence[str],
        slots: Mapping[str, Slot],
        *,
        every_value: Sequence[EveryValue] = (),
        generated: Mapping[str, Callable[[random.Random], str]] | None = None,
        samples_per_template: int = 40,
        repeats_of_fixed_sentences: int = 3,
    ) -> None:
        self.templates = list(templates)
        self.slots = dict(slots)
        self.every_value = list(every_value)
        self.generated = dict(generated or {})
        self.samples_per_template = samples_per_template
        self.repeats_of_fixed_sentences = repeats_of_fixed_sentences
        self._check()

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> CorpusGrammar:
        """From `corpus.toml`'s contents, with the vocabulary's slots and {phone}."""
        slots = {name: Slot(tuple(values)) for name, values in vocabulary_slots().items()}
        for name, spec in {**data.get("slots", {}), **data.get("word_slots", {})}.items():
            if name in slots:
                raise ValueError(f"slot {name!r} is defined twice")
            if isinstance(spec, str):  # a [word_slots] entry: single words as wrapped text
                slots[name] = Slot(tuple(spec.split()))
            elif isinstance(spec, list):
                slots[name] = Slot(tuple(spec))
            else:
                slots[name] = Slot(tuple(spec["values"]), tuple(spec.get("draw_first", ())))
        digits = slots["digit"].values
        return cls(
            data["templates"],
            slots,
            every_value=[EveryValue(e["slot"], e["in"]) for e in data.get("every_value", [])],
            generated={"phone": lambda rng: spoken_phone_number(rng, digits)},
            samples_per_template=data["samples_per_template"],
            repeats_of_fixed_sentences=data["repeats_of_fixed_sentences"],
        )

    def _check(self) -> None:
        """Every {slot} used is defined, so a typo fails the build instead of a sentence."""
        known = self.slots.keys() | self.generated.keys()
        texts = [*self.templates, *(e.sentence for e in self.every_value)]
        for slot in self.slots.values():
            texts += slot.values
        used = {name for text in texts for name in _SLOT.findall(text)}
        used |= {name for slot in self.slots.values() for name in slot.draw_first}
        used |= {e.slot for e in self.every_value}
        unknown = sorted(used - known)
        if unknown:
            raise ValueError(f"undefined slots: {', '.join(unknown)}")

    def sentences(self, seed: int) -> Iterator[list[str]]:
        """Sentences as word lists: each template sampled (one with no slots repeated as it
        is), then each `every_value` entry once per value of its slot."""
        rng = random.Random(seed)
        for template in self.templates:
            has_slots = _SLOT.search(template) is not None
            count = self.samples_per_template if has_slots else self.repeats_of_fixed_sentences
            for _ in range(count):
                yield self._expand(template, rng, {}).split()
        for entry in self.every_value:
            for value in self.slots[entry.slot].values:
                bound = {entry.slot: self._expand(value, rng, {})}
                yield self._expand(entry.sentence, rng, bound).split()

    def _draw(self, name: str, rng: random.Random) -> str:
        if name in self.generated:
            return self.generated[name](rng)
        slot = self.slots[name]
        bound = {first: self._draw(first, rng) for first in slot.draw_first}
        return self._expand(rng.choice(slot.values), rng, bound)

    def _expand(self, text: str, rng: random.Random, bound: Mapping[str, str]) -> str:
        # Left to right, so the draws happen in the order the slots are written.
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            return bound[name] if name in bound else self._draw(name, rng)

        return _SLOT.sub(fill, text)


def load_corpus(path: Path = CORPUS_PATH) -> tuple[CorpusGrammar, dict[str, Any]]:
    """The grammar and the raw data (its `seed`, `extra_pronunciations`)."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    return CorpusGrammar.from_data(data), data
