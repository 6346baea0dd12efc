import asyncio
import json
from datetime import date, datetime, time

import pytest

from sipagent.booking.rules import (
    BookingRuleError,
    ClinicHours,
    normalise_phone,
    parse_date,
    parse_time,
    read_date,
    resolve_start,
)
from sipagent.booking.store import InMemoryBookingStore
from sipagent.booking.vocabulary import day_of_month_words
from sipagent.providers.base import ToolCall
from sipagent.tools.receptionist import TOOL_SCHEMAS, ReceptionistTools

HOURS = ClinicHours(timezone="America/New_York")
WEDNESDAY = datetime(2026, 11, 25, 10, 0, tzinfo=HOURS.zone)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow", date(2026, 11, 26)),
        ("day after tomorrow", date(2026, 11, 27)),
        ("next Tuesday", date(2026, 12, 1)),
        ("Friday", date(2026, 11, 27)),
        ("Wednesday", date(2026, 12, 2)),  # today is Wednesday: the next one
        ("December 3", date(2026, 12, 3)),
        ("the fifteenth of March", date(2027, 3, 15)),
        ("3rd of December", date(2026, 12, 3)),
        ("2026-12-07", date(2026, 12, 7)),
        ("the day after tomorrow", date(2026, 11, 27)),
        ("a week from today", date(2026, 12, 2)),
        ("the twenty first of December at 10", date(2026, 12, 21)),
        ("March 24th at 10 am", date(2027, 3, 24)),
        ("Tuesday the 1st of December", date(2026, 12, 1)),
    ],
)
def test_natural_dates(text, expected):
    assert parse_date(text, WEDNESDAY.date()) == expected


def test_every_day_of_the_month_the_recogniser_is_taught_reads_as_that_day():
    # day_of_month_words() is what the offline recogniser's language model learns to hear.
    for day, said in enumerate(day_of_month_words(), start=1):
        assert parse_date(f"March {said}", WEDNESDAY.date()) == date(2027, 3, day), said
        assert parse_date(f"the {said} of March", WEDNESDAY.date()) == date(2027, 3, day), said
        hyphenated = said.replace(" ", "-")  # how Whisper writes "twenty-first"
        assert parse_date(f"March {hyphenated}", WEDNESDAY.date()) == date(2027, 3, day), said


def test_thirty_after_a_clock_hour_is_the_minutes_not_the_tens_of_a_day():
    assert parse_date("at ten thirty, first of April", WEDNESDAY.date()) == date(2027, 4, 1)
    assert parse_date("April first at ten thirty", WEDNESDAY.date()) == date(2027, 4, 1)


def test_a_day_the_month_does_not_have_is_not_a_date():
    with pytest.raises(BookingRuleError):
        parse_date("February thirty first", WEDNESDAY.date())


def test_an_explicit_date_wins_over_a_weekday_that_contradicts_it_and_says_so():
    reading = read_date("Monday the 24th of March", WEDNESDAY.date())
    assert reading.day == date(2027, 3, 24)
    assert reading.weekday_mismatch == "March 24 is a Wednesday, not a Monday"
    assert read_date("Wednesday the 24th of March", WEDNESDAY.date()).weekday_mismatch is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 pm", time(15)), ("3:30 p.m.", time(15, 30)), ("15:00", time(15)),
        ("three pm", time(15)), ("ten thirty", time(10, 30)), ("half past two", time(14, 30)),
        ("noon", time(12)), ("9 in the morning", time(9)), ("at three", time(15)),
        ("quarter to three", time(14, 45)), ("quarter past ten", time(10, 15)),
        ("a quarter to twelve", time(11, 45)),
    ],
)  # fmt: skip
def test_natural_times(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("said", "region", "e164"),
    [
        ("(555) 123-4567", "US", "+15551234567"),
        ("five five five one two three four five six seven", "US", "+15551234567"),
        ("555-123-4567 ext. 12", "US", "+15551234567"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),  # a London number, as a Londoner says it
        ("07700 900123", "GB", "+447700900123"),
        ("(02) 9374 4000", "AU", "+61293744000"),
        ("0412 345 678", "AU", "+61412345678"),
        ("030 1234567", "DE", "+49301234567"),
        ("plus three three one four two six eight five three zero zero", "US", "+33142685300"),
    ],
)
def test_phone_numbers_are_read_in_the_clinics_region_and_kept_in_e164(said, region, e164):
    assert normalise_phone(said, region) == e164


def test_an_incomplete_phone_number_is_explained():
    with pytest.raises(BookingRuleError, match="not a complete US number"):
        normalise_phone("555 1234")
    with pytest.raises(BookingRuleError, match="not a phone number"):
        normalise_phone("no idea")


def test_dst_change_keeps_local_wall_time():
    start = resolve_start("2027-03-15", "09:00", HOURS)  # the Monday after the spring change
    assert start.hour == 9 and start.utcoffset().total_seconds() == -4 * 3600  # EDT after


def tools() -> tuple[ReceptionistTools, InMemoryBookingStore]:
    store = InMemoryBookingStore()
    return ReceptionistTools(store, HOURS, clock=lambda: WEDNESDAY), store


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(id="call_1", name=name, arguments=json.dumps(arguments))


BOOKING = {
    "patient_name": "Maria Lopez", "phone": "555-123-4567", "preferred_date": "2026-12-01",
    "preferred_time": "15:00", "reason": "cleaning",
}  # fmt: skip


async def test_books_and_reports_what_to_read_back():
    executor, store = tools()
    outcome = await executor.execute(call("book_appointment", **BOOKING), "call-1")
    result = json.loads(outcome.content)
    assert result["ok"] and result["when"] == "Tuesday December 1 at 3:00 PM"
    assert result["phone"] == "+15551234567"
    [stored] = store.appointments
    assert stored.call_id == "call-1" and stored.duration_minutes == 60


async def test_double_booking_is_refused_with_alternatives():
    executor, store = tools()
    results = await asyncio.gather(
        *(executor.execute(call("book_appointment", **BOOKING), f"c{i}") for i in range(10))
    )
    outcomes = [json.loads(r.content) for r in results]
    assert sum(o["ok"] for o in outcomes) == 1 and len(store.appointments) == 1
    refused = next(o for o in outcomes if not o["ok"])
    assert refused["error"] == "that time is already taken" and refused["alternatives"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"reason": "whitening"}, "reason must be one of"),
        ({"preferred_date": "2026-11-28"}, "closed on Saturdays"),
        ({"preferred_time": "20:00"}, "open 9:00 AM to 5:00 PM"),
        ({"preferred_date": "2026-11-25", "preferred_time": "09:00"}, "already passed"),
        ({"phone": "12345"}, "not a complete US number"),
        # The model is asked for ISO dates and 24-hour times; words come back to it.
        ({"preferred_date": "next Tuesday"}, "is not YYYY-MM-DD"),
        ({"preferred_time": "3 pm"}, "is not 24-hour HH:MM"),
        ({"patient_name": ""}, "missing: patient_name"),
    ],
)
async def test_invalid_requests_come_back_as_explanations(changes, error):
    executor, store = tools()
    outcome = await executor.execute(call("book_appointment", **{**BOOKING, **changes}), "c")
    result = json.loads(outcome.content)
    assert not result["ok"] and error in result["error"]
    assert not store.appointments


async def test_bad_json_and_unknown_tools_are_tool_errors():
    executor, _ = tools()
    bad = await executor.execute(ToolCall("x", "book_appointment", '{"patient_name": "Ann'), "c")
    assert "not valid JSON" in json.loads(bad.content)["error"]
    unknown = await executor.execute(ToolCall("x", "launch_rocket", "{}"), "c")
    assert "unknown tool" in json.loads(unknown.content)["error"]


async def test_availability_and_call_control_tools():
    executor, _ = tools()
    asked = call("check_availability", preferred_date="2026-11-27")
    free = json.loads((await executor.execute(asked, "c")).content)
    assert free["date"] == "2026-11-27" and free["free_times"][0] == "Friday November 27 at 9:00 AM"
    assert (await executor.execute(call("end_call"), "c")).action == "hangup"
    assert (await executor.execute(call("transfer_to_human"), "c")).action == "transfer"
    assert {t["function"]["name"] for t in TOOL_SCHEMAS} == {
        "book_appointment", "check_availability", "find_appointments", "cancel_appointment",
        "reschedule_appointment", "transfer_to_human", "end_call",
    }  # fmt: skip


async def test_closed_times_come_back_with_alternatives():
    executor, _ = tools()
    outcome = await executor.execute(
        call("book_appointment", **{**BOOKING, "preferred_date": "2026-11-28"}), "c"
    )
    result = json.loads(outcome.content)
    assert "closed on Saturdays" in result["error"]
    assert result["alternatives"][0] == "Monday November 30 at 9:00 AM"


async def test_returning_caller_finds_reschedules_and_cancels():
    executor, store = tools()
    await executor.execute(call("book_appointment", **BOOKING), "c1")
    found = json.loads(
        (await executor.execute(call("find_appointments", phone="555 123 4567"), "c2")).content
    )
    [appointment] = found["appointments"]
    assert appointment["when"] == "Tuesday December 1 at 3:00 PM"
    moved = json.loads((await executor.execute(call(
        "reschedule_appointment", appointment_id=appointment["appointment_id"],
        new_date="2026-12-02", new_time="10:00"), "c2")).content)  # fmt: skip
    assert moved["ok"] and moved["rescheduled"]["when"] == "Wednesday December 2 at 10:00 AM"
    new_id = moved["rescheduled"]["appointment_id"]
    assert [a.status for a in store.appointments] == ["rescheduled", "booked"]
    cancelled = json.loads(
        (await executor.execute(call("cancel_appointment", appointment_id=new_id), "c2")).content
    )
    assert cancelled["ok"] and cancelled["cancelled"]["status"] == "cancelled"
    again = json.loads(
        (await executor.execute(call("cancel_appointment", appointment_id=new_id), "c2")).content
    )
    assert not again["ok"] and "find it first" in again["error"]
    bad = json.loads(
        (await executor.execute(call("cancel_appointment", appointment_id="x"), "c2")).content
    )
    assert not bad["ok"] and "appointment_id" in bad["error"]


async def test_reschedule_onto_a_taken_time_keeps_the_booking():
    executor, store = tools()
    await executor.execute(call("book_appointment", **BOOKING), "c1")
    other = {
        **BOOKING,
        "patient_name": "Ann Lee",
        "phone": "555 987 6543",
        "preferred_time": "10:00",
    }
    await executor.execute(call("book_appointment", **other), "c2")
    moved = json.loads((await executor.execute(call(
        "reschedule_appointment", appointment_id=1, new_date="2026-12-01", new_time="10:00"
    ), "c3")).content)  # fmt: skip
    assert not moved["ok"] and moved["error"] == "that time is already taken"
    assert [a.status for a in store.appointments] == ["booked", "booked"]


async def test_the_same_tools_over_the_sql_store(tmp_path):
    from sipagent.storage import SqlBookingStore, make_engine, upgrade

    url = f"sqlite:///{tmp_path}/tools.db"
    upgrade(url)
    store = SqlBookingStore(make_engine(url), HOURS.slot_minutes, timezone=HOURS.timezone)
    executor = ReceptionistTools(store, HOURS, clock=lambda: WEDNESDAY)
    booked = json.loads((await executor.execute(call("book_appointment", **BOOKING), "c1")).content)
    taken = json.loads((await executor.execute(call("book_appointment", **BOOKING), "c2")).content)
    assert booked["ok"] and not taken["ok"] and taken["alternatives"]
    found = json.loads(
        (await executor.execute(call("find_appointments", phone="5551234567"), "c3")).content
    )
    appointment_id = found["appointments"][0]["appointment_id"]
    moved = json.loads((await executor.execute(call(
        "reschedule_appointment", appointment_id=appointment_id, new_date="2026-11-26",
        new_time="14:00"), "c3")).content)  # fmt: skip
    assert moved["rescheduled"]["when"] == "Thursday November 26 at 2:00 PM"
    new_id = moved["rescheduled"]["appointment_id"]
    outcome = await executor.execute(call("cancel_appointment", appointment_id=new_id), "c3")
    cancelled = json.loads(outcome.content)
    assert cancelled["ok"] and not await store.find_by_phone("+15551234567")
