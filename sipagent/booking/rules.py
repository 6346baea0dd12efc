"""Booking rules: dates and times, clinic hours, phone numbers. Pure; `now` injected.

The tools take what the LLM is asked for, ISO dates (YYYY-MM-DD) and 24-hour times (HH:MM) in
the clinic's time zone (`parse_iso_date`, `parse_iso_time`): the model knows today's date and
turns "next Tuesday" into a date far better than any rule. The natural-language readers
(`read_date`, `parse_time`) serve the offline scripted receptionist, which has no model. Phone
numbers are read by Google's libphonenumber (`phonenumbers`) in the clinic's region and kept
in E.164. The date and number words are `vocabulary.py`'s, which the offline recogniser's
language model is built from too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers

from sipagent.booking.vocabulary import MONTHS, NUMBER_WORDS, ORDINALS, WEEKDAYS, digit_words

REASONS = ("cleaning", "checkup", "emergency", "consultation")


# Spoken phone words, as digits and signs libphonenumber reads.
_SPOKEN_PHONE = {
    **{word: str(NUMBER_WORDS[word]) for word in digit_words()},
    "plus": "+", "extension": " ext ", "ext": " ext ",
}  # fmt: skip


class BookingRuleError(ValueError):
    """A request the clinic cannot accept. The message is meant for the LLM to act on (it may
    say what to do next); `for_caller` is the same fact said to the caller, with no
    instruction in it (the scripted receptionist speaks only that)."""

    def __init__(self, message: str, for_caller: str = "") -> None:
        super().__init__(message)
        self.for_caller = for_caller


@dataclass(frozen=True, slots=True)
class ClinicHours:
    timezone: str = "America/New_York"
    open_days: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday..Friday
    opens: time = time(9, 0)
    closes: time = time(17, 0)
    slot_minutes: int = 30
    durations: dict[str, int] = field(
        default_factory=lambda: {"cleaning": 60, "checkup": 30, "emergency": 30, "consultation": 30}
    )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9:/-]+", text.lower().replace(".", ""))


@dataclass(frozen=True, slots=True)
class DateReading:
    day: date
    # A weekday said with an explicit date that does not fall on it ("Monday the 24th of
    # March" when the 24th is a Wednesday): the date wins, and this says so to the caller.
    weekday_mismatch: str | None = None


def parse_date(text: str, today: date) -> date:
    return read_date(text, today).day


def read_date(text: str, today: date) -> DateReading:
    """'tomorrow', 'the day after tomorrow', 'a week from today', 'next Tuesday', 'Friday',
    'December 3', '3rd of December', 'Monday the 24th of March', '2026-12-03'."""
    lowered = text.lower().strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", lowered):
        return DateReading(date.fromisoformat(lowered))
    words = _words(lowered)
    weekday = next(
        (i for i, name in enumerate(WEEKDAYS) if name in words or name[:3] in words), None
    )
    explicit = _explicit_date(text, lowered, words, today)
    if explicit is not None:
        if weekday is None or weekday == explicit.weekday():
            return DateReading(explicit)
        return DateReading(
            explicit,
            f"{explicit:%B} {explicit.day} is a {WEEKDAYS[explicit.weekday()].title()}, "
            f"not a {WEEKDAYS[weekday].title()}",
        )
    if "week" in words and ("from" in words or "in" in words) and weekday is None:
        start = today + timedelta(days=1) if "tomorrow" in words else today
        return DateReading(start + timedelta(days=7))  # "a week from today", "in a week"
    if "tomorrow" in words:
        return DateReading(today + timedelta(days=2 if "after" in words else 1))
    if "today" in words:
        return DateReading(today)
    if weekday is not None:
        ahead = (weekday - today.weekday()) % 7 or 7
        if "next" in words and ahead < 7 and today.weekday() < weekday and "week" in words:
            ahead += 7  # "Tuesday next week"
        return DateReading(today + timedelta(days=ahead))
    raise BookingRuleError(
        f"could not understand the date {text!r}; ask for a weekday or a date like 'December 3'",
        "I didn't catch the day.",
    )


def _explicit_date(text: str, lowered: str, words: list[str], today: date) -> date | None:
    """A month and day named in the text (the next such date from today on), or None."""
    month = next((i + 1 for i, m in enumerate(MONTHS) if m in words or m[:3] in words), None)
    # A day said as an ordinal ("24th", "the fifteenth", "twenty first") beats a bare number,
    # which may be the time ("March 24th at 10").
    ordinal: int | None = None
    bare: int | None = None
    # "twenty-first", "thirty-first" (as recognisers write them): the tens and the ordinal.
    words = [part for word in words for part in _split_spoken_ordinal(word)]
    for index, word in enumerate(words):
        digits = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", word)
        if digits and digits.group(2):
            ordinal = ordinal or int(digits.group(1))
        elif digits:
            after = words[index + 1] if index + 1 < len(words) else ""
            if bare is None and after not in ("am", "pm", "oclock", "o"):
                bare = int(digits.group(1))
        elif word in ORDINALS:
            tens = _ORDINAL_TENS.get(words[index - 1], 0) if index > 0 else 0
            said_before_tens = words[index - 2] if index > 1 else ""
            if (
                ORDINALS[word] >= 10  # "twenty tenth" is no day
                or ORDINALS[word] + tens > 31  # nor is "thirty second"
                # "at ten thirty, first of April": the tens are the minutes of a time
                or said_before_tens == "at"
                or NUMBER_WORDS.get(said_before_tens, 0) in range(1, 13)
            ):
                tens = 0
            ordinal = ordinal or (ORDINALS[word] + tens)
    day = ordinal or bare
    slash = re.search(r"\b(\d{1,2})/(\d{1,2})\b", lowered)
    if slash:
        month, day = int(slash.group(1)), int(slash.group(2))
    if not (month and day):
        return None
    try:
        candidate = date(today.year, month, day)
    except ValueError as error:
        raise BookingRuleError(
            f"{text!r} is not a valid date", "I didn't catch the day."
        ) from error
    return candidate if candidate >= today else candidate.replace(year=today.year + 1)


# The tens said before an ordinal day: "twenty first" is the 21st, "thirty first" the 31st.
_ORDINAL_TENS = {"twenty": 20, "thirty": 30}


def _split_spoken_ordinal(word: str) -> list[str]:
    tens, hyphen, unit = word.partition("-")
    if hyphen and tens in _ORDINAL_TENS and unit in ORDINALS:
        return [tens, unit]
    return [word]


def parse_iso_date(text: str) -> date:
    """A tool argument: YYYY-MM-DD, nothing else (the model resolves "next Tuesday")."""
    try:
        return date.fromisoformat(text.strip()) if len(text.strip()) == 10 else _no_date(text)
    except ValueError:
        return _no_date(text)


def _no_date(text: str) -> date:
    raise BookingRuleError(
        f"the date {text!r} is not YYYY-MM-DD; work out the calendar date from today's date "
        "and call again",
        "I didn't catch the day.",
    )


def parse_iso_time(text: str) -> time:
    """A tool argument: 24-hour HH:MM in the clinic's time zone, nothing else."""
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text.strip())
    if match is None:
        raise BookingRuleError(
            f"the time {text!r} is not 24-hour HH:MM (e.g. 14:30 for half past two in the "
            "afternoon); call again with that",
            "I didn't catch the time.",
        )
    return time(int(match.group(1)), int(match.group(2)))


def parse_time(text: str) -> time:
    """'3 pm', '3:30 p.m.', '15:00', 'three pm', 'ten thirty', 'half past two', 'noon'."""
    lowered = text.lower().replace(".", "").strip()
    if "noon" in lowered or "midday" in lowered:
        return time(12, 0)
    meridiem = "pm" if re.search(r"\b(pm|afternoon|evening)\b", lowered) else None
    if re.search(r"\b(am|morning)\b", lowered):
        meridiem = "am"
    clock = re.search(r"\b(\d{1,2})(?::(\d{2}))?\b", lowered)
    if clock:
        hour, minute = int(clock.group(1)), int(clock.group(2) or 0)
    else:
        numbers = [NUMBER_WORDS[w] for w in _words(lowered) if w in NUMBER_WORDS]
        if not numbers:
            raise BookingRuleError(
                f"could not understand the time {text!r}; ask e.g. '3 pm'",
                "I didn't catch the time.",
            )
        if "half" in lowered and "past" in lowered:
            hour, minute = numbers[0], 30
        elif "quarter" in lowered and re.search(r"\b(to|till|until|of)\b", lowered):
            hour, minute = (numbers[0] - 1) or 12, 45  # "quarter to three" is 2:45
        elif "quarter" in lowered:
            hour, minute = numbers[0], 15 if "past" in lowered or "after" in lowered else 0
        else:
            hour, minute = numbers[0], sum(numbers[1:3])
    if meridiem == "pm" and hour < 12:
        hour += 12
    elif meridiem == "am" and hour == 12:
        hour = 0
    elif meridiem is None and 1 <= hour <= 6:
        hour += 12  # "at three" at a clinic means the afternoon
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise BookingRuleError(f"{text!r} is not a valid time", "I didn't catch the time.")
    return time(hour, minute)


def normalise_phone(text: str, region: str = "US") -> str:
    """E.164, read by libphonenumber as dialled in `region` (the clinic's country): national
    forms ("020 7946 0958" in GB), international ones ("+61 2 9374 4000", "0044 ..."), spoken
    digits ("five five five ...", "plus four four ..."). An extension ("ext. 12") is read but
    not kept: E.164 has no place for it."""
    spoken = re.sub(
        r"[a-z]+",
        lambda word: _SPOKEN_PHONE.get(word.group(0), word.group(0)),
        text.lower().replace("ext.", "ext"),
    )
    try:
        number = phonenumbers.parse(spoken, region.upper())
    except phonenumbers.NumberParseException as error:
        raise BookingRuleError(
            f"{text!r} is not a phone number; ask for it digit by digit",
            "I didn't catch the phone number.",
        ) from error
    # Not IS_POSSIBLE_LOCAL_ONLY: a number without its area code cannot be called back.
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        country = phonenumbers.region_code_for_number(number) or region.upper()
        raise BookingRuleError(
            f"the phone number {text!r} is not a complete {country} number; ask for the full "
            "number with its area code",
            "I need the full phone number, with the area code.",
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_slot(start: datetime, duration_minutes: int, hours: ClinicHours, now: datetime) -> None:
    """Raise BookingRuleError (with what to offer instead) unless the clinic can take it."""
    local = start.astimezone(hours.zone)
    if start <= now:
        raise BookingRuleError(
            "that time has already passed; offer a time from tomorrow on",
            "That time has already passed.",
        )
    if local.weekday() not in hours.open_days:
        names = ", ".join(WEEKDAYS[d].title() for d in hours.open_days)
        closed = f"the clinic is closed on {WEEKDAYS[local.weekday()].title()}s"
        raise BookingRuleError(
            f"{closed}; open {names}", f"We're closed on {WEEKDAYS[local.weekday()].title()}s."
        )
    end = (local + timedelta(minutes=duration_minutes)).time()
    if local.time() < hours.opens or end > hours.closes or end <= local.time():
        raise BookingRuleError(
            f"the clinic is open {hours.opens:%-I:%M %p} to {hours.closes:%-I:%M %p}; "
            f"a {duration_minutes}-minute visit must fit inside",
            f"We're open from {hours.opens:%-I:%M %p} to {hours.closes:%-I:%M %p}, and a "
            f"{duration_minutes}-minute visit wouldn't fit then.",
        )
    if local.minute % hours.slot_minutes:
        raise BookingRuleError(
            f"appointments start on the {hours.slot_minutes}-minute marks",
            f"Appointments start every {hours.slot_minutes} minutes.",
        )


def resolve_start(date_text: str, time_text: str, hours: ClinicHours) -> datetime:
    """The start of a visit from tool arguments (ISO date, 24-hour time) in the clinic's zone."""
    return datetime.combine(parse_iso_date(date_text), parse_iso_time(time_text), hours.zone)
