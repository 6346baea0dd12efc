"""How callers say dates and numbers: the words the booking rules read, shared with the build
of the offline recogniser's language model (`tools/receptionist_lm`), so that the recogniser
can hear every date and number word the rules understand."""

from __future__ import annotations

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


def digit_words() -> list[str]:
    """The words said for one digit of a phone number, 'zero' and 'oh' included."""
    return [word for word, value in NUMBER_WORDS.items() if value < 10]


def clock_hour_words() -> list[str]:
    """'one' to 'twelve', in order."""
    return [word for word, value in NUMBER_WORDS.items() if 1 <= value <= 12]


def day_of_month_words() -> list[str]:
    """Days 1-31 said as ordinals, in order: 'first' ... 'twentieth', 'twenty first' ...
    'thirtieth', 'thirty first'."""
    by_value = {value: word for word, value in ORDINALS.items()}
    tens = {value: word for word, value in NUMBER_WORDS.items() if value in (20, 30)}
    return [
        by_value.get(day) or f"{tens[day - day % 10]} {by_value[day % 10]}" for day in range(1, 32)
    ]
