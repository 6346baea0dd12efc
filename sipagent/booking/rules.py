"""Booking rules: natural dates and times, clinic hours, phone numbers. Pure; `now` injected."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

REASONS = ("cleaning", "checkup", "emergency", "consultation")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
NUMBER_WORDS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "forty-five": 45, "fifty": 50,
}  # fmt: skip
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip


class BookingRuleError(ValueError):
    """A request the clinic cannot accept; the message is meant for the LLM to act on."""


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


def parse_date(text: str, today: date) -> date:
    """'tomorrow', 'next Tuesday', 'Friday', 'December 3', '3rd of December', '2026-12-03'."""
    lowered = text.lower().strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", lowered):
        return date.fromisoformat(lowered)
    words = _words(lowered)
    if "today" in words:
        return today
    if "tomorrow" in words:
        return today + timedelta(days=2 if "after" in words else 1)
    for index, name in enumerate(WEEKDAYS):
        if name in words or name[:3] in words:
            ahead = (index - today.weekday()) % 7 or 7
            if "next" in words and ahead < 7 and today.weekday() < index and "week" in words:
                ahead += 7  # "Tuesday next week"
            return today + timedelta(days=ahead)
    month = next((i + 1 for i, m in enumerate(MONTHS) if m in words or m[:3] in words), None)
    day = None
    for word in words:
        digits = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", word)
        if digits:
            day = int(digits.group(1))
        elif word in ORDINALS:
            day = ORDINALS[word] + (day or 0) if day == 20 else ORDINALS[word]
        elif word == "twenty":
            day = 20
    slash = re.search(r"\b(\d{1,2})/(\d{1,2})\b", lowered)
    if slash:
        month, day = int(slash.group(1)), int(slash.group(2))
    if month and day:
        try:
            candidate = date(today.year, month, day)
        except ValueError as error:
            raise BookingRuleError(f"{text!r} is not a valid date") from error
        return candidate if candidate >= today else candidate.replace(year=today.year + 1)
    raise BookingRuleError(
        f"could not understand the date {text!r}; ask for a weekday or a date like 'December 3'"
    )


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
            raise BookingRuleError(f"could not understand the time {text!r}; ask e.g. '3 pm'")
        if "half" in lowered and "past" in lowered:
            hour, minute = numbers[0], 30
        elif "quarter" in lowered:
            hour, minute = numbers[0], 15 if "past" in lowered else 0
        else:
            hour, minute = numbers[0], sum(numbers[1:3])
    if meridiem == "pm" and hour < 12:
        hour += 12
    elif meridiem == "am" and hour == 12:
        hour = 0
    elif meridiem is None and 1 <= hour <= 6:
        hour += 12  # "at three" at a clinic means the afternoon
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise BookingRuleError(f"{text!r} is not a valid time")
    return time(hour, minute)


def normalise_phone(text: str, default_country_code: str = "1") -> str:
    """E.164. Accepts digits, spoken digits ('five five five ...'), +country codes."""
    spoken = [
        str(NUMBER_WORDS[w]) for w in _words(text) if w in NUMBER_WORDS and NUMBER_WORDS[w] < 10
    ]
    digits = re.sub(r"\D", "", text) or "".join(spoken)
    if text.strip().startswith("+") and 8 <= len(digits) <= 15:
        return "+" + digits
    if len(digits) == 10:
        return f"+{default_country_code}{digits}"
    if len(digits) == 11 and digits.startswith(default_country_code):
        return "+" + digits
    raise BookingRuleError(
        f"the phone number {text!r} has {len(digits)} digits; ask for the full 10-digit number"
    )


def check_slot(start: datetime, duration_minutes: int, hours: ClinicHours, now: datetime) -> None:
    """Raise BookingRuleError (with what to offer instead) unless the clinic can take it."""
    local = start.astimezone(hours.zone)
    if start <= now:
        raise BookingRuleError("that time has already passed; offer a time from tomorrow on")
    if local.weekday() not in hours.open_days:
        names = ", ".join(WEEKDAYS[d].title() for d in hours.open_days)
        raise BookingRuleError(
            f"the clinic is closed on {WEEKDAYS[local.weekday()].title()}s; open {names}"
        )
    end = (local + timedelta(minutes=duration_minutes)).time()
    if local.time() < hours.opens or end > hours.closes or end <= local.time():
        raise BookingRuleError(
            f"the clinic is open {hours.opens:%-I:%M %p} to {hours.closes:%-I:%M %p}; "
            f"a {duration_minutes}-minute visit must fit inside"
        )
    if local.minute % hours.slot_minutes:
        raise BookingRuleError(f"appointments start on the {hours.slot_minutes}-minute marks")


def resolve_start(date_text: str, time_text: str, hours: ClinicHours, now: datetime) -> datetime:
    day = parse_date(date_text, now.astimezone(hours.zone).date())
    return datetime.combine(day, parse_time(time_text), tzinfo=hours.zone)
