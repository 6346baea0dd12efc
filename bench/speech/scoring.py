"""Word error rate and slot accuracy on the evaluation clips (shared by the benchmark and tests).

Recognisers write numbers differently ("3 pm", "three p.m.", "555-0123"), so reference and
hypothesis are both normalised to spoken words before comparing: digits are read out (a
number of one or two digits as a number, longer ones digit by digit), "p.m." is "pm", "oh" in a
digit string is "zero", hyphens split words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
CLIPS = HERE / "clips"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]  # fmt: skip
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
         8: "eighty", 9: "ninety"}  # fmt: skip
_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "5th": "fifth", "8th": "eighth",
             "9th": "ninth", "12th": "twelfth", "20th": "twentieth", "30th": "thirtieth",
             "21st": "twenty first", "22nd": "twenty second", "23rd": "twenty third",
             "31st": "thirty first"}  # fmt: skip
_DIGIT_WORDS = {w: str(i) for i, w in enumerate(_ONES[:10])} | {"oh": "0"}
_SPELLINGS = {"check-up": "checkup", "check up": "checkup", "dr.": "doctor", "ok": "okay",
              "goodbye": "good bye", "good-bye": "good bye", "metres": "meters",
              "o'clock": "oclock", "mr.": "mister", "mrs.": "missus"}  # fmt: skip


def _number_words(number: str) -> str:
    if len(number) > 2:  # phone numbers and the like are read digit by digit
        return " ".join(_ONES[int(d)] for d in number)
    n = int(number)
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")


def _ordinal(match: re.Match[str]) -> str:
    token = match.group(0).lower()
    if token in _ORDINALS:
        return _ORDINALS[token]
    return _number_words(token[:-2]) + "th"  # 4th, 15th ... (fourth, fifteenth)


def normalise(text: str) -> list[str]:
    text = text.lower()
    for spelled, canonical in _SPELLINGS.items():
        text = re.sub(rf"(?<![a-z]){re.escape(spelled)}(?![a-z])", canonical, text)
    text = re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", text)
    text = re.sub(r"\b\d+(st|nd|rd|th)\b", _ordinal, text)
    text = re.sub(r"(\d+):(\d\d)", lambda m: f"{m.group(1)} {m.group(2)}", text)
    text = re.sub(r"\d+", lambda m: f" {_number_words(m.group(0))} ", text)
    words = re.sub(r"[^a-z' ]", " ", text).split()
    words = [w.strip("'") for w in words if w.strip("'")]
    # "oh" read as a digit, between digit words
    return [
        "zero" if w == "oh" and 0 < i < len(words) - 1 and words[i - 1] in _DIGIT_WORDS else w
        for i, w in enumerate(words)
    ]


def digits(words: list[str]) -> str:
    return "".join(_DIGIT_WORDS.get(w, "") for w in words)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            substitution = prev + (ref[i - 1] != hyp[j - 1])
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, substitution)
    return row[len(hyp)]


def slot_heard(kind: str, value: str, hyp: list[str]) -> bool:
    """A slot is right when its words appear in order in the hypothesis (digits: as a run)."""
    if kind == "digits":
        return value in digits(hyp)
    want = normalise(value)
    return any(hyp[i : i + len(want)] == want for i in range(len(hyp) - len(want) + 1))


@dataclass(frozen=True, slots=True)
class Clip:
    file: str
    voice: str
    family: str
    text: str
    slots: dict[str, str]

    def mulaw(self) -> bytes:
        return (CLIPS / self.file).read_bytes()


def load_clips() -> list[Clip]:
    return [Clip(**row) for row in json.loads(MANIFEST.read_text())]
