"""Build the receptionist's language model and dictionary for pocketsphinx.

    python -m sipagent.providers.receptionist_lm.build

writes, next to this file:
  receptionist.lm    a trigram ARPA model (interpolated absolute discounting, written in
                     back-off form) estimated on a corpus of template sentences;
  receptionist.dict  pronunciations for exactly the model's words, taken from the CMU
                     dictionary inside the pocketsphinx wheel.

Why a generated n-gram model rather than the wheel's general English model: on 8 kHz phone
audio (upsampled) the general model is slow (RTF ~0.5) and its 130k-word vocabulary turns
short answers into look-alike words. This ~530-word model of what callers say to a dental
receptionist decodes ~10x faster (RTF ~0.05) and gets most slot words (services, days, dates,
times, digits, names) right; a JSGF grammar would be faster still, but an n-gram model
tolerates sentences that no template wrote out word for word. Words outside the vocabulary can
never be recognised: add them to the lists below and rebuild (the tests check that the
committed files are this script's output).

The output is deterministic (seeded sampling, sorted output), so a rebuild with unchanged
inputs leaves the committed files byte-identical.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
LM_PATH = HERE / "receptionist.lm"
DICT_PATH = HERE / "receptionist.dict"

SEED = 20240611
SENTENCES_PER_TEMPLATE = 40

# --- slot values -------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Long word lists as wrapped text: easier to read and extend than one literal per line."""
    return text.split()


SERVICES = [
    "a cleaning",
    "a teeth cleaning",
    "a dental cleaning",
    "a checkup",
    "a check up",
    "an exam",
    "a dental exam",
    "a consultation",
    "an emergency appointment",
    "an emergency visit",
    "a filling",
    "a crown",
    "a root canal",
    "an extraction",
    "a tooth extraction",
    "whitening",
    "teeth whitening",
    "x-rays",
    "a new patient appointment",
    "an appointment",
    "an appointment with the hygienist",
    "an appointment with the dentist",
    "a follow up",
]
PROBLEMS = [
    "a toothache",
    "a bad toothache",
    "a broken tooth",
    "a chipped tooth",
    "a cracked tooth",
    "a lost filling",
    "bleeding gums",
    "swollen gums",
    "a lot of pain",
    "some pain",
    "sensitive teeth",
    "a swollen face",
    "a wisdom tooth that hurts",
]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
ORDINALS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
    "twenty first",
    "twenty second",
    "twenty third",
    "twenty fourth",
    "twenty fifth",
    "twenty sixth",
    "twenty seventh",
    "twenty eighth",
    "twenty ninth",
    "thirtieth",
    "thirty first",
]
HOURS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
MINUTES = ["fifteen", "thirty", "forty five", "o'clock", "oh five", "twenty", "forty"]
DIGITS = ["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FIRST_NAMES = _words("""
james mary john patricia robert jennifer michael linda william elizabeth david barbara richard
susan joseph jessica thomas sarah charles karen christopher nancy daniel lisa matthew betty
anthony margaret mark sandra donald ashley steven kimberly paul emily andrew donna joshua
michelle kenneth carol kevin amanda brian melissa george deborah timothy stephanie ronald
rebecca jason laura edward sharon jeffrey cynthia ryan kathleen jacob amy gary angela
nicholas helen eric anna jonathan brenda stephen pamela larry nicole justin emma scott
samantha brandon katherine benjamin christine samuel debra frank rachel gregory catherine
raymond carolyn alexander janet patrick ruth jack maria dennis heather jerry diane tyler
olivia aaron julie jose joyce adam victoria henry kelly nathan christina douglas lauren
zachary joan peter evelyn kyle judith noah sophia ethan grace jeremy alice christian julia
walter jean keith hannah austin madison roger abigail terry isabella sean chloe carlos
lucy luis mia juan ava maya priya ahmed mohammed wei
""")
LAST_NAMES = _words("""
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris
sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill
flores green adams nelson baker hall rivera campbell mitchell carter roberts patel kim chen
wong murphy sullivan kelly cooper reed cook morgan bell bailey cox howard ward peterson gray
james watson brooks sanders price bennett wood barnes ross henderson coleman jenkins perry
powell long patterson hughes butler simmons foster gonzales bryant alexander russell griffin
diaz hayes myers ford hamilton graham wallace west cole stone shaw fisher
""")
DENTISTS = ["doctor patel", "doctor chen", "doctor smith", "doctor garcia", "the hygienist"]

# --- templates ---------------------------------------------------------------------------------
# {slot} placeholders are filled by the generators in SLOTS. Several phrasings per intent, so
# the n-grams cover the ways people actually start and end these sentences.

TEMPLATES = [
    # booking
    "i'd like to book {service}",
    "i would like to book {service}",
    "i'd like to book {service} {when}",
    "i'd like to book {service} for {when}",
    "i would like to make {service} {when}",
    "i'd like to make an appointment",
    "i'd like to make an appointment for {service}",
    "i want to book {service}",
    "i want to schedule {service} {when}",
    "can i book {service} {when}",
    "can i get {service} {when}",
    "could i book {service} {when} please",
    "i need {service}",
    "i need {service} {when}",
    "i need to book {service}",
    "i need to schedule {service}",
    "i'm calling to book {service}",
    "i'm calling to make an appointment",
    "i'd like to schedule {service}",
    "do you have anything {when}",
    "do you have any openings {when}",
    "do you have an opening {when}",
    "is {when} available",
    "is there anything available {when}",
    "what times do you have {when}",
    "what do you have {when}",
    "i'm a new patient",
    "i'm an existing patient",
    "i've been there before",
    "it's for my {family}",
    "it's for my {family} {first}",
    "can i see {dentist}",
    "i'd like to see {dentist}",
    "with {dentist} please",
    # emergencies and problems
    "i have {problem}",
    "i've got {problem}",
    "i have {problem} and i need to see someone",
    "it's an emergency",
    "this is an emergency",
    "i think it's an emergency",
    "my tooth hurts",
    "my tooth is broken",
    "it really hurts",
    "the pain started {relday}",
    "can someone see me today",
    "can i come in today",
    "as soon as possible",
    # changing and cancelling
    "i need to cancel my appointment",
    "i'd like to cancel my appointment {when}",
    "i need to reschedule my appointment",
    "i'd like to reschedule",
    "can i move my appointment to {when}",
    "i have an appointment {when}",
    "when is my appointment",
    "i want to change my appointment",
    # dates and times on their own
    "{when}",
    "{day}",
    "{date}",
    "{time}",
    "{day} {time}",
    "{day} at {time}",
    "{relday} at {time}",
    "{date} at {time}",
    "on {day}",
    "on {date}",
    "at {time}",
    "how about {when}",
    "how about {time}",
    "maybe {when}",
    "{time} works",
    "{time} would be great",
    "{when} works for me",
    "{when} would be good",
    "any time {part}",
    "sometime {part}",
    "something {part}",
    "i prefer {part}",
    "{part} is better for me",
    "anything after {time}",
    "anything before {time}",
    "i'm free {when}",
    "i can do {when}",
    "i can't do {when}",
    "not {day}",
    "the earliest you have",
    "the first available appointment",
    # names
    "my name is {first} {last}",
    "my name is {first}",
    "this is {first} {last}",
    "it's {first} {last}",
    "{first} {last}",
    "the name is {last}",
    "my last name is {last}",
    "my first name is {first}",
    "{last}",
    "it's for {first} {last}",
    "the appointment is for {first} {last}",
    "i'm {first} {last}",
    # phone numbers and dates of birth
    "my number is {phone}",
    "my phone number is {phone}",
    "it's {phone}",
    "you can reach me at {phone}",
    "call me at {phone}",
    "{phone}",
    "my date of birth is {date} nineteen {year}",
    "my birthday is {date}",
    "{month} {ordinal} nineteen {year}",
    # answers and pleasantries
    "{yes}",
    "{no}",
    "{yes} {thanks}",
    "{yes} that's right",
    "{yes} that works",
    "{yes} that's fine",
    "{yes} {agree} {thanks}",
    "{agree} {thanks}",
    "{agree} {thanks} {bye}",
    "{yes} {agree} {thanks} {bye}",
    "{no} {thanks} {bye}",
    "{no} {thanks}",
    "{no} i'm good {thanks}",
    "{yes} please",
    "{no} thank you",
    "{no} that's all",
    "{no} that's not right",
    "{no} {when} doesn't work",
    "{thanks}",
    "{thanks} {bye}",
    "{bye}",
    "that's all {thanks}",
    "that's everything",
    "that's it",
    "that's correct",
    "sounds good",
    "perfect",
    "great {thanks}",
    "hello",
    "hi",
    "hi there",
    "hello i'd like to book {service}",
    "hi i'd like to book {service} {when}",
    "hi my name is {first} {last}",
    "hi this is {first} {last}",
    "good morning",
    "good afternoon",
    "sorry",
    "sorry what was that",
    "can you repeat that",
    "what did you say",
    "i didn't catch that",
    "just a moment",
    "hold on",
    "let me check",
    "um let me think",
    "i'm not sure",
    "i don't know",
    "what are your hours",
    "are you open on {day}",
    "are you open {relday}",
    "where are you located",
    "do you take my insurance",
    "how much does {service} cost",
    "how long does it take",
    "can i speak to someone",
    "can i speak to a person",
    "i'd like to talk to the receptionist",
]

AGREE = [
    "that works",
    "that's fine",
    "that's right",
    "that's perfect",
    "that's great",
    "sounds good",
]
YES = ["yes", "yeah", "yep", "sure", "okay", "ok", "right", "correct", "absolutely"]
NO = ["no", "nope", "no no", "not really"]
THANKS = ["thanks", "thank you", "thank you very much", "thanks a lot", "great thanks"]
BYE = ["goodbye", "bye", "bye bye", "have a nice day", "see you then", "talk to you later"]
FAMILY = ["son", "daughter", "wife", "husband", "mother", "father", "kid", "child"]
PARTS = [
    "in the morning",
    "in the afternoon",
    "in the evening",
    "early in the morning",
    "late in the afternoon",
    "around lunch",
    "at lunchtime",
    "this week",
    "next week",
]
RELDAYS = ["today", "tomorrow", "the day after tomorrow", "this week", "next week"]


def _phone(rng: random.Random) -> str:
    n = rng.choice([7, 10, 10, 4, 3])
    words = [rng.choice(DIGITS) for _ in range(n)]
    if rng.random() < 0.3:  # the classic fictional exchange, said as digits
        words = ["five", "five", "five", *words[3:]]
    return " ".join(words)


def _time(rng: random.Random) -> str:
    hour = rng.choice(HOURS)
    shape = rng.randrange(10)
    if shape == 0:
        return f"{hour} {rng.choice(MINUTES)}"
    if shape == 1:
        return f"{hour} {rng.choice(MINUTES)} {rng.choice(['a.m.', 'p.m.'])}"
    if shape == 2:
        return f"{hour} {rng.choice(['a.m.', 'p.m.', 'pm', 'am'])}"
    if shape == 3:
        return f"{hour} {rng.choice(['in the morning', 'in the afternoon', 'in the evening'])}"
    if shape == 4:
        return f"half past {hour}"
    if shape == 5:
        return f"quarter {rng.choice(['past', 'to'])} {hour}"
    if shape == 6:
        return rng.choice(["noon", "twelve noon", "midday", "lunchtime"])
    if shape == 7:
        return f"{hour} o'clock"
    return hour


def _date(rng: random.Random) -> str:
    month, ordinal = rng.choice(MONTHS), rng.choice(ORDINALS)
    shape = rng.randrange(4)
    if shape == 0:
        return f"the {ordinal} of {month}"
    if shape == 1:
        return f"{month} {ordinal}"
    if shape == 2:
        return f"{month} the {ordinal}"
    return f"the {ordinal}"


def _day(rng: random.Random) -> str:
    day = rng.choice(WEEKDAYS)
    return rng.choice([day, day, f"next {day}", f"this {day}", f"on {day}", f"{day} morning"])


def _when(rng: random.Random) -> str:
    shape = rng.randrange(8)
    if shape <= 1:
        return _day(rng)
    if shape == 2:
        return rng.choice(RELDAYS)
    if shape == 3:
        return f"on {_date(rng)}"
    if shape == 4:
        return f"{_day(rng)} at {_time(rng)}"
    if shape == 5:
        return f"{rng.choice(RELDAYS)} at {_time(rng)}"
    if shape == 6:
        return f"{_day(rng)} {rng.choice(PARTS)}"
    return f"at {_time(rng)}"


SLOTS = {
    "service": lambda rng: rng.choice(SERVICES),
    "problem": lambda rng: rng.choice(PROBLEMS),
    "when": _when,
    "day": _day,
    "relday": lambda rng: rng.choice(RELDAYS),
    "date": _date,
    "time": _time,
    "part": lambda rng: rng.choice(PARTS),
    "first": lambda rng: rng.choice(FIRST_NAMES),
    "last": lambda rng: rng.choice(LAST_NAMES),
    "phone": _phone,
    "month": lambda rng: rng.choice(MONTHS),
    "ordinal": lambda rng: rng.choice(ORDINALS),
    "year": lambda rng: rng.choice(["seventy", "eighty five", "ninety two", "sixty"]),
    "dentist": lambda rng: rng.choice(DENTISTS),
    "family": lambda rng: rng.choice(FAMILY),
    "yes": lambda rng: rng.choice(YES),
    "agree": lambda rng: rng.choice(AGREE),
    "no": lambda rng: rng.choice(NO),
    "thanks": lambda rng: rng.choice(THANKS),
    "bye": lambda rng: rng.choice(BYE),
}
_SLOT_RE = re.compile(r"\{(\w+)\}")


def corpus(seed: int = SEED) -> Iterator[list[str]]:
    """Sentences as word lists: every template, sampled; then every list value once more, so
    no name or ordinal depends on the luck of the draw to enter the vocabulary."""
    rng = random.Random(seed)
    for template in TEMPLATES:
        n = SENTENCES_PER_TEMPLATE if "{" in template else 3
        for _ in range(n):
            yield _SLOT_RE.sub(lambda m: SLOTS[m.group(1)](rng), template).split()
    for name in FIRST_NAMES:
        yield f"my name is {name} {rng.choice(LAST_NAMES)}".split()
    for name in LAST_NAMES:
        yield f"{rng.choice(FIRST_NAMES)} {name}".split()
    for ordinal in ORDINALS:
        yield f"the {ordinal} of {rng.choice(MONTHS)}".split()
    for words in [
        *SERVICES,
        *PROBLEMS,
        *MONTHS,
        *WEEKDAYS,
        *DIGITS,
        *HOURS,
        *MINUTES,
        *YES,
        *NO,
        *THANKS,
        *BYE,
    ]:
        yield words.split()


# --- estimation --------------------------------------------------------------------------------

BOS, EOS = "<s>", "</s>"


def _discount(counts: Iterable[int]) -> float:
    """Absolute discount D = n1 / (n1 + 2 n2) (Ney et al.), clamped to a sane range."""
    hist = Counter(c for c in counts if c <= 2)
    n1, n2 = hist[1], hist[2]
    if n1 == 0:
        return 0.5
    return min(0.9, max(0.3, n1 / (n1 + 2 * n2)))


def estimate(sentences: Iterable[list[str]]) -> tuple[dict[str, float], list[dict]]:
    """Return (unigram probs, [bigram, trigram] tables) with back-off weights.

    Interpolated absolute discounting: p(w|h) = max(c(h,w) - D, 0) / c(h) + g(h) p(w|h'),
    g(h) = D * types(h) / c(h). Written in ARPA back-off form this is exact: seen n-grams carry
    the interpolated probability and g(h) is the back-off weight, so the model is normalised.
    """
    uni: Counter[str] = Counter()
    bi: defaultdict[str, Counter[str]] = defaultdict(Counter)
    tri: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for words in sentences:
        toks = [BOS, *words, EOS]
        for i, w in enumerate(toks):
            if i == 0:
                continue
            uni[w] += 1
            bi[toks[i - 1]][w] += 1
            if i >= 2:
                tri[(toks[i - 2], toks[i - 1])][w] += 1

    vocab = sorted(uni)  # every word is predicted at least once (EOS too); BOS never is
    total = sum(uni.values())
    # Add-one unigrams: every vocabulary word keeps some mass whatever the template weights.
    p1 = {w: (uni[w] + 1) / (total + len(vocab)) for w in vocab}

    d2 = _discount(c for nxt in bi.values() for c in nxt.values())
    bow1: dict[str, float] = {}
    p2: dict[tuple[str, str], float] = {}
    for h, nxt in bi.items():
        ch = sum(nxt.values())
        g = d2 * len(nxt) / ch
        bow1[h] = g
        for w, c in nxt.items():
            p2[(h, w)] = (c - d2) / ch + g * p1[w]

    def p2_full(h: str, w: str) -> float:
        if (h, w) in p2:
            return p2[(h, w)]
        return bow1.get(h, 1.0) * p1[w]

    d3 = _discount(c for nxt in tri.values() for c in nxt.values())
    bow2: dict[tuple[str, str], float] = {}
    p3: dict[tuple[str, str, str], float] = {}
    for (u, v), nxt in tri.items():
        ch = sum(nxt.values())
        g = d3 * len(nxt) / ch
        bow2[(u, v)] = g
        for w, c in nxt.items():
            p3[(u, v, w)] = (c - d3) / ch + g * p2_full(v, w)

    unigrams = {w: p1[w] for w in vocab}
    bigrams = {"probs": p2, "bows": bow1}
    trigrams = {"probs": p3, "bows": bow2}
    return unigrams, [bigrams, trigrams]


def write_arpa(path: Path, unigrams: dict[str, float], higher: list[dict]) -> None:
    bigrams, trigrams = higher
    lines = [
        "# Generated by sipagent/providers/receptionist_lm/build.py: do not edit by hand.",
        "",
        "\\data\\",
        f"ngram 1={len(unigrams) + 1}",
        f"ngram 2={len(bigrams['probs'])}",
        f"ngram 3={len(trigrams['probs'])}",
        "",
        "\\1-grams:",
    ]

    def lg(p: float) -> str:
        return f"{math.log10(p):.4f}"

    # BOS is never predicted (-99 by convention) but is a history, so it carries a back-off.
    lines.append(f"-99.0000\t{BOS}\t{lg(bigrams['bows'][BOS])}")
    for w in sorted(unigrams):
        bow = bigrams["bows"].get(w)
        lines.append(f"{lg(unigrams[w])}\t{w}" + (f"\t{lg(bow)}" if bow is not None else ""))
    lines += ["", "\\2-grams:"]
    for h, w in sorted(bigrams["probs"]):
        bow = trigrams["bows"].get((h, w))
        lines.append(
            f"{lg(bigrams['probs'][(h, w)])}\t{h} {w}" + (f"\t{lg(bow)}" if bow is not None else "")
        )
    lines += ["", "\\3-grams:"]
    for u, v, w in sorted(trigrams["probs"]):
        lines.append(f"{lg(trigrams['probs'][(u, v, w)])}\t{u} {v} {w}")
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# Words the wheel's CMU dictionary lacks.
EXTRA_PRONUNCIATIONS = {
    "toothache": ["T UW TH EY K"],
    "priya": ["P R IY Y AH"],
}


def cmudict_path() -> Path:
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


def write_dict(path: Path, words: Iterable[str], source: Path) -> None:
    wanted = set(words) - {BOS, EOS}
    entries: dict[str, list[str]] = defaultdict(list)
    with source.open(encoding="utf-8") as f:
        for line in f:
            head, _, phones = line.strip().partition(" ")
            base = re.sub(r"\(\d+\)$", "", head)
            if base in wanted:
                # Drop trailing "#" comments some CMUdict entries carry.
                entries[base].append(phones.split("#")[0].strip())
    for word, prons in EXTRA_PRONUNCIATIONS.items():
        if word in wanted and word not in entries:
            entries[word].extend(prons)
    missing = sorted(wanted - entries.keys())
    if missing:
        raise SystemExit(f"not in {source.name}: {' '.join(missing)} (add a pronunciation)")
    lines = []
    for word in sorted(entries):
        for i, phones in enumerate(entries[word]):
            lines.append(f"{word} {phones}" if i == 0 else f"{word}({i + 1}) {phones}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    sentences = list(corpus())
    unigrams, higher = estimate(sentences)
    write_arpa(LM_PATH, unigrams, higher)
    write_dict(DICT_PATH, unigrams.keys(), cmudict_path())
    print(
        f"{len(sentences)} sentences, {len(unigrams) - 1} words, "
        f"{len(higher[0]['probs'])} bigrams, {len(higher[1]['probs'])} trigrams -> "
        f"{LM_PATH.name} ({LM_PATH.stat().st_size // 1024} KiB), {DICT_PATH.name}"
    )


if __name__ == "__main__":
    main()
