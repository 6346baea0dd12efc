"""The date and number words shared by the booking rules and the recogniser's LM build."""

from sipagent.booking.rules import normalise_phone, parse_time
from sipagent.booking.vocabulary import clock_hour_words, day_of_month_words, digit_words


def test_digit_words_are_the_single_digits_with_oh_for_zero():
    assert digit_words() == [
        "zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ]  # fmt: skip
    assert normalise_phone("two oh two five five five zero one nine nine") == "+12025550199"


def test_clock_hours_are_one_to_twelve_and_read_as_those_hours():
    hours = clock_hour_words()
    assert hours[0] == "one" and hours[-1] == "twelve" and len(hours) == 12
    for hour, word in enumerate(hours, start=1):
        assert parse_time(f"{word} am").hour == hour % 12


def test_days_of_the_month_are_said_as_ordinals_in_order():
    days = day_of_month_words()
    assert len(days) == 31
    assert days[:3] == ["first", "second", "third"]
    assert days[19:23] == ["twentieth", "twenty first", "twenty second", "twenty third"]
    assert days[-2:] == ["thirtieth", "thirty first"]
