"""The offline receptionist fills the slots and drives the same tools as the cloud model."""

import json
from datetime import datetime

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import InMemoryBookingStore
from sipagent.providers.scripted_llm import ScriptedReceptionist, extract_slots
from sipagent.tools.receptionist import TOOL_SCHEMAS, ReceptionistTools

HOURS = ClinicHours()
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=HOURS.zone)


async def converse(user_turns: list[str]):
    llm = ScriptedReceptionist()
    store = InMemoryBookingStore()
    tools = ReceptionistTools(store, HOURS, clock=lambda: NOW)
    # Today, as the session's system prompt states it.
    today = NOW.strftime("%A %B %-d, %Y, %-I:%M %p %Z")
    messages = [{"role": "system", "content": f"You are Sarah. Today is {today}."}]
    spoken = []
    for turn in user_turns:
        messages.append({"role": "user", "content": turn})
        for _ in range(3):  # tool rounds
            text, calls = "", ()
            async for chunk in llm.stream(messages, TOOL_SCHEMAS):
                text += chunk.text
                calls = chunk.tool_calls or calls
            spoken.append(text)
            if not calls:
                messages.append({"role": "assistant", "content": text})
                break
            tool_calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ]
            messages.append({"role": "assistant", "content": text, "tool_calls": tool_calls})
            for c in calls:
                outcome = await tools.execute(c, "call-1")
                messages.append({"role": "tool", "tool_call_id": c.id, "content": outcome.content})
    return spoken, store, messages


async def test_full_booking_conversation_in_lower_case_speech():
    spoken, store, _ = await converse(
        [
            "hi i'd like to book a cleaning",
            "my name is maria lopez",
            "next tuesday at three pm",
            "five five five one two three four five six seven",
            "no thanks bye",
        ]
    )
    assert "full name" in spoken[0] and "what day" in spoken[1].lower()
    assert "phone number" in spoken[2]
    [appointment] = store.appointments
    assert (appointment.patient_name, appointment.reason) == ("Maria Lopez", "cleaning")
    assert appointment.start.isoformat() == "2026-12-01T15:00:00-05:00"
    assert appointment.phone == "+15551234567"
    assert any("You're all set, Maria Lopez" in s and "Tuesday December 1" in s for s in spoken)
    assert "Goodbye" in spoken[-2] or "Goodbye" in spoken[-1]


async def test_refused_time_is_explained_and_a_new_time_books():
    spoken, store, _ = await converse(
        ["I need a checkup, this is John Smith, Saturday at 10 am, 555 987 6543", "Monday at 10 am"]
    )
    assert any("closed on Saturdays" in s for s in spoken)
    [appointment] = store.appointments
    assert appointment.start.strftime("%A %H:%M") == "Monday 10:00"


def test_slot_extraction():
    slots = extract_slots(["it's an emergency, my tooth hurts", "this is ann lee, tomorrow noon"])
    assert (slots.reason, slots.name, slots.time) == ("emergency", "Ann Lee", "noon")
    assert slots.date and "tomorrow" in slots.date


async def test_human_and_keypad_zero_transfer():
    llm = ScriptedReceptionist()
    for text in ("can I talk to a real person", "(keypad) 0"):
        chunks = [c async for c in llm.stream([{"role": "user", "content": text}], TOOL_SCHEMAS)]
        assert chunks[-1].tool_calls[0].name == "transfer_to_human"
        assert json.loads(chunks[-1].tool_calls[0].arguments)


def test_recogniser_spellings():
    slots = extract_slots(
        [
            "i'd like a checkup",
            "next tuesday at three p m",
            "five five five oh one two three four five six",
        ]
    )
    assert slots.time == "at three pm" and slots.phone == "5550123456"
    assert extract_slots(["ten forty five a m"]).time == "ten forty-five am"


async def test_an_explicit_date_is_booked_and_a_contradicting_weekday_said_back():
    spoken, store, messages = await converse(
        [
            "i need a checkup, this is ann lee",
            "monday the 24th of march at half past two",
            "two one two five five five zero one two three",
        ]
    )
    assert any(s.startswith("March 24 is a Wednesday, not a Monday.") for s in spoken)
    [appointment] = store.appointments
    assert appointment.start.isoformat() == "2027-03-24T14:30:00-04:00"
    # What the tools were handed: what a model is asked for, not the caller's words.
    [asked] = [m for m in messages if m.get("tool_calls")]
    arguments = json.loads(asked["tool_calls"][0]["function"]["arguments"])
    assert (arguments["preferred_date"], arguments["preferred_time"]) == ("2027-03-24", "14:30")


async def test_relative_dates_and_spoken_times_book_from_the_prompts_today():
    _, store, _ = await converse(
        ["a cleaning please, this is maria lopez", "the day after tomorrow at half past two",
         "555 123 4567"]
    )  # fmt: skip
    [appointment] = store.appointments
    assert appointment.start.isoformat() == "2026-11-27T14:30:00-05:00"
    _, store, _ = await converse(
        ["a checkup, this is john smith", "a week from today at noon", "555 987 6543"]
    )
    [appointment] = store.appointments
    assert appointment.start.isoformat() == "2026-12-02T12:00:00-05:00"


MODEL_WORDING = ("offer a time", "call again", "ask for", "ask the caller", "YYYY", "HH:MM")


async def test_tool_instructions_are_never_read_to_the_caller_and_two_refusals_end_the_loop():
    """A refused time comes back from the tools with an instruction for the model ("that time
    has already passed; offer a time from tomorrow on"): the caller hears the fact only. After
    two refusals in a row the caller is offered concrete times or a person, not asked again."""
    spoken, store, _ = await converse(
        [
            "I need a checkup, this is John Smith, today at 9 am, 555 987 6543",
            "Saturday at 10 am",
        ]
    )
    said = " ".join(spoken)
    assert not any(wording in said for wording in MODEL_WORDING), said
    assert "That time has already passed." in said
    assert store.appointments == []
    last = [s for s in spoken if s][-1]
    assert "closed on Saturdays" in last and "colleague" in last, last
    assert "I could do" in last  # concrete times, from the tool's alternatives


def test_a_time_said_with_the_number_is_not_part_of_it():
    slots = extract_slots(["this is john smith, today at 9 am, 555 987 6543"])
    assert slots.phone == "5559876543" and (slots.time or "").endswith("9 am")
