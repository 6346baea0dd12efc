"""The dental receptionist's toolset for the conversation engine: its system prompt, the JSON
schemas of its tools for the LLM, and their execution.

Every failure (bad JSON, missing or invalid fields, a closed or taken slot) comes back to the
LLM as a tool result `{"ok": false, "error": ...}` it can act on; nothing raises into the call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sipagent.booking.rules import (
    REASONS,
    BookingRuleError,
    ClinicHours,
    check_slot,
    normalise_phone,
    parse_iso_date,
    resolve_start,
)
from sipagent.booking.store import Appointment, BookingStore, SlotTakenError
from sipagent.conversation.toolset import CallAction, ToolOutcome
from sipagent.providers.base import ToolCall

log = logging.getLogger("sipagent.tools")

SYSTEM_PROMPT = """You are {persona}, the receptionist of {clinic}, answering the phone.
Speak naturally in 1-2 short sentences per reply; this is a phone call, so no lists, no
markdown, no emojis. Help callers book appointments: collect the patient's full name, phone
number, preferred date and time, and the reason (cleaning, checkup, emergency or
consultation), then call book_appointment and read the booking back. Use check_availability
before offering times. If a tool returns an error, explain it simply and offer alternatives.
Text like "(keypad) 5551234567" is what the caller typed on the keypad. If the caller asks for
a person, call transfer_to_human. When the caller is done, say goodbye and call end_call.
Today is {today}. Tool arguments take dates as YYYY-MM-DD and times as 24-hour HH:MM, in the
clinic's time zone."""


def receptionist_prompt(persona: str, clinic: str, today: str) -> str:
    """The system prompt; `today` as "Wednesday November 25, 2026, 9:30 AM EST" (the offline
    scripted receptionist reads the date from it)."""
    return SYSTEM_PROMPT.format(persona=persona, clinic=clinic, today=today)


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


# The model turns "next Tuesday at 3" into these itself (today's date is in its prompt).
_DATE = {
    "type": "string",
    "description": "calendar date as YYYY-MM-DD, e.g. 2026-12-01",
    "pattern": r"^\d{4}-\d{2}-\d{2}$",
}
_TIME = {
    "type": "string",
    "description": "24-hour time HH:MM in the clinic's time zone, e.g. 15:00 for 3 pm",
    "pattern": r"^([01]\d|2[0-3]):[0-5]\d$",
}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    _function(
        "book_appointment",
        "Book a dental appointment once you have the patient's name, phone, date, time and reason.",
        {
            "patient_name": {"type": "string", "description": "full name of the patient"},
            "phone": {"type": "string", "description": "callback phone number, as said"},
            "preferred_date": _DATE,
            "preferred_time": _TIME,
            "reason": {"type": "string", "enum": list(REASONS)},
        },
        ["patient_name", "phone", "preferred_date", "preferred_time", "reason"],
    ),
    _function(
        "check_availability",
        "List free appointment times on a date before offering them.",
        {"preferred_date": _DATE, "reason": {"type": "string", "enum": list(REASONS)}},
        ["preferred_date"],
    ),
    _function(
        "find_appointments",
        "Look up a returning caller's booked appointments by their phone number.",
        {"phone": {"type": "string"}},
        ["phone"],
    ),
    _function(
        "cancel_appointment",
        "Cancel a booked appointment (get its id from find_appointments first).",
        {"appointment_id": {"type": "integer"}},
        ["appointment_id"],
    ),
    _function(
        "reschedule_appointment",
        "Move a booked appointment to a new date and time.",
        {
            "appointment_id": {"type": "integer"},
            "new_date": _DATE,
            "new_time": _TIME,
        },
        ["appointment_id", "new_date", "new_time"],
    ),
    _function(
        "transfer_to_human",
        "Transfer the caller to the front desk staff.",
        {"reason": {"type": "string"}},
        [],
    ),
    _function(
        "end_call",
        "Say goodbye and hang up once the caller is done.",
        {"reason": {"type": "string"}},
        [],
    ),
]


def _result(**fields: Any) -> str:
    return json.dumps(fields, default=str)


def _describe(appointment: Appointment) -> dict[str, Any]:
    return {
        "appointment_id": appointment.id,
        "patient_name": appointment.patient_name,
        "reason": appointment.reason,
        "when": appointment.start.strftime("%A %B %-d at %-I:%M %p"),
        "status": appointment.status,
    }


def _appointment_id(args: dict[str, Any]) -> int:
    try:
        return int(args.get("appointment_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise BookingRuleError(
            "appointment_id must be the number find_appointments gave"
        ) from error


class ReceptionistTools:
    schemas: ClassVar[list[dict[str, Any]]] = TOOL_SCHEMAS
    # A lone "0" on the keypad asks for a person, as on any phone menu.
    keypad_shortcuts: ClassVar[Mapping[str, str]] = {"0": "transfer_to_human"}

    def __init__(
        self,
        store: BookingStore,
        hours: ClinicHours,
        clock: Callable[[], datetime],
        region: str = "US",
    ) -> None:
        self.store = store
        self.hours = hours
        self.clock = clock
        self.region = region  # where phone numbers are dialled from (the clinic's country)

    async def execute(self, tool_call: ToolCall, call_id: str) -> ToolOutcome:
        try:
            arguments = json.loads(tool_call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as error:
            return ToolOutcome(_result(ok=False, error=f"arguments were not valid JSON: {error}"))
        handler = getattr(self, f"_tool_{tool_call.name}", None)
        if handler is None:
            return ToolOutcome(_result(ok=False, error=f"unknown tool {tool_call.name!r}"))
        try:
            return await handler(arguments, call_id)
        except BookingRuleError as error:
            return ToolOutcome(_result(ok=False, error=str(error), say=error.for_caller))
        except Exception as error:  # the call goes on: the LLM apologises and recovers
            log.exception("tool %s failed", tool_call.name)
            return ToolOutcome(_result(ok=False, error=f"internal error: {type(error).__name__}"))

    async def _tool_book_appointment(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        missing = [
            name
            for name in ("patient_name", "phone", "preferred_date", "preferred_time", "reason")
            if not str(args.get(name) or "").strip()
        ]
        if missing:
            return ToolOutcome(
                _result(ok=False, error=f"missing: {', '.join(missing)}; ask the caller")
            )
        reason = str(args["reason"]).strip().lower()
        if reason not in REASONS:
            return ToolOutcome(
                _result(ok=False, error=f"reason must be one of {', '.join(REASONS)}")
            )
        phone = normalise_phone(str(args["phone"]), self.region)
        now = self.clock()
        start = resolve_start(str(args["preferred_date"]), str(args["preferred_time"]), self.hours)
        duration = self.hours.durations.get(reason, self.hours.slot_minutes)
        refused = await self._refusal(start, duration, now)
        if refused is not None:
            return refused
        appointment = Appointment(
            patient_name=str(args["patient_name"]).strip(),
            phone=phone,
            start=start,
            duration_minutes=duration,
            reason=reason,
            call_id=call_id,
        )
        try:
            stored = await self.store.book(appointment)
        except SlotTakenError:
            free = await self._free_slots(start, duration, now)
            return ToolOutcome(
                _result(
                    ok=False,
                    error="that time is already taken",
                    say="That time is already taken.",
                    alternatives=free[:3],
                )
            )
        return ToolOutcome(
            _result(
                ok=True,
                appointment_id=stored.id,
                patient_name=stored.patient_name,
                phone=stored.phone,
                reason=stored.reason,
                when=stored.start.strftime("%A %B %-d at %-I:%M %p"),
                duration_minutes=stored.duration_minutes,
            )
        )

    async def _refusal(self, start: datetime, duration: int, now: datetime) -> ToolOutcome | None:
        """A closed or past time is refused with the nearest times that are possible."""
        try:
            check_slot(start, duration, self.hours, now)
        except BookingRuleError as error:
            around = max(start, now + timedelta(days=1))
            free = await self._free_slots(around, duration, now)
            return ToolOutcome(
                _result(ok=False, error=str(error), say=error.for_caller, alternatives=free[:3])
            )
        return None

    async def _tool_find_appointments(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        phone = normalise_phone(str(args.get("phone") or ""), self.region)
        found = await self.store.find_by_phone(phone)
        return ToolOutcome(
            _result(ok=True, phone=phone, appointments=[_describe(a) for a in found])
        )

    async def _tool_cancel_appointment(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        appointment_id = _appointment_id(args)
        try:
            cancelled = await self.store.cancel(appointment_id)
        except LookupError:
            return ToolOutcome(
                _result(ok=False, error=f"no booked appointment #{appointment_id}; find it first")
            )
        return ToolOutcome(_result(ok=True, cancelled=_describe(cancelled)))

    async def _tool_reschedule_appointment(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        appointment_id = _appointment_id(args)
        current = await self.store.get(appointment_id)
        if current is None or current.status != "booked":
            return ToolOutcome(
                _result(ok=False, error=f"no booked appointment #{appointment_id}; find it first")
            )
        now = self.clock()
        start = resolve_start(
            str(args.get("new_date") or ""), str(args.get("new_time") or ""), self.hours
        )
        refused = await self._refusal(start, current.duration_minutes, now)
        if refused is not None:
            return refused
        try:
            moved = await self.store.reschedule(appointment_id, start, call_id=call_id)
        except SlotTakenError:
            free = await self._free_slots(start, current.duration_minutes, now)
            return ToolOutcome(
                _result(
                    ok=False,
                    error="that time is already taken",
                    say="That time is already taken.",
                    alternatives=free[:3],
                )
            )
        return ToolOutcome(_result(ok=True, rescheduled=_describe(moved)))

    async def _tool_check_availability(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        now = self.clock()
        day = parse_iso_date(str(args.get("preferred_date") or ""))
        reason = str(args.get("reason") or "checkup").lower()
        duration = self.hours.durations.get(reason, self.hours.slot_minutes)
        start = datetime.combine(day, self.hours.opens, tzinfo=self.hours.zone)
        free = await self._free_slots(start, duration, now, same_day=True)
        return ToolOutcome(_result(ok=True, date=day.isoformat(), free_times=free[:8]))

    async def _free_slots(
        self, around: datetime, duration: int, now: datetime, same_day: bool = False
    ) -> list[str]:
        zone = self.hours.zone
        free: list[str] = []
        day = around.astimezone(zone).date()
        for offset in range(0, 1 if same_day else 7):
            current = day + timedelta(days=offset)
            slot = datetime.combine(current, self.hours.opens, tzinfo=zone)
            closing = datetime.combine(current, self.hours.closes, tzinfo=zone)
            booked = await self.store.booked_between(slot, closing)
            while slot + timedelta(minutes=duration) <= closing:
                end = slot + timedelta(minutes=duration)
                try:
                    check_slot(slot, duration, self.hours, now)
                    if not any(a.start < end and slot < a.end for a in booked):
                        free.append(slot.strftime("%A %B %-d at %-I:%M %p"))
                except BookingRuleError:
                    pass
                slot += timedelta(minutes=self.hours.slot_minutes)
            if len(free) >= 8:
                break
        return free

    async def _tool_transfer_to_human(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        return ToolOutcome(_result(ok=True, transferring=True), action=CallAction.TRANSFER)

    async def _tool_end_call(self, args: dict[str, Any], call_id: str) -> ToolOutcome:
        return ToolOutcome(_result(ok=True, hanging_up=True), action=CallAction.HANG_UP)
