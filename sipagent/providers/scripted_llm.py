"""Offline LLM: a deterministic, scripted receptionist (no model weights can be shipped).

It fills the same slots as the cloud model (reason, name, date, time, phone), asks for what
is missing, and emits the same tool calls (`book_appointment`, `end_call`,
`transfer_to_human`), reading tool results back. Stateless: everything is derived from the
message history, exactly like a chat-completions model (today's date from the system prompt).
It reads dates and times as callers say them and hands the tools what a model would: an ISO
date and a 24-hour time; a weekday that contradicts an explicit date is said back.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sipagent.booking.rules import NUMBER_WORDS, BookingRuleError, parse_time, read_date
from sipagent.providers.base import LlmChunk, ToolCall

_REASONS = {
    "cleaning": ("clean",),
    "checkup": ("checkup", "check-up", "check up", "exam"),
    "emergency": ("emergency", "pain", "toothache", "broken", "hurts", "swollen"),
    "consultation": ("consult",),
}
_TIME = re.compile(
    r"\b(?:(?:half past|(?:a )?quarter (?:past|to|after))\s+"
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\d{1,2})|"
    r"\d{1,2}(?::\d{2})?\s*(?:a\.?m\.?|p\.?m\.?)|noon|"
    r"(?:at\s+)?(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\d{1,2})"
    r"(?:\s+(?:thirty|fifteen|forty-five|o'clock))?\s*(?:a\.?m\.?|p\.?m\.?|in the morning|"
    r"in the afternoon)?(?=\W|$))",
    re.IGNORECASE,
)
_DATE_WORDS = re.compile(
    r"\b(today|tomorrow|week|monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|"
    r"february|march|april|may|june|july|august|september|october|november|december|"
    r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2})\b",
    re.IGNORECASE,
)
_NAME = re.compile(
    r"\b(?:my name is|my name's|this is|name is|i am|it's)\s+([a-z][a-z'-]+(?:\s+[a-z][a-z'-]+)?)",
    re.IGNORECASE,
)
_NOT_NAMES = {"calling", "looking", "trying", "here", "just", "a", "the", "not", "going", "fine"}
_TODAY = re.compile(r"Today is (?:\w+ )?(\w+ \d{1,2}, \d{4})")
_GOODBYE = re.compile(r"\b(bye|goodbye|that's all|that is all|nothing else|no thanks)\b", re.I)
_HUMAN = re.compile(r"\b(human|real person|receptionist|operator|someone|front desk)\b", re.I)


@dataclass(slots=True)
class Slots:
    reason: str | None = None
    name: str | None = None
    date: str | None = None
    time: str | None = None
    phone: str | None = None

    def missing(self) -> list[str]:
        return [n for n in ("reason", "name", "date", "time", "phone") if not getattr(self, n)]


# A time said in the same breath ("today at 9 am, 555 987 6543") is no part of the number.
_SPOKEN_TIME = re.compile(r"\b(?:\d{1,2}(?::\d{2})?|[a-z]+(?:-[a-z]+)?)\s*(?:am|pm|o'clock)\b")


def _phone_digits(text: str) -> str:
    out = []
    for token in re.findall(r"[a-z]+|\d", _SPOKEN_TIME.sub(" ", text.lower())):
        if token.isdigit():
            out.append(token)
        elif token in NUMBER_WORDS and NUMBER_WORDS[token] < 10:
            out.append(str(NUMBER_WORDS[token]))
    return "".join(out)


def normalise_spoken(text: str) -> str:
    """Recogniser spellings to what the parsers read: "p m"/"p.m." -> "pm", "forty five" ->
    "forty-five"."""
    text = re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", text, flags=re.IGNORECASE)
    return re.sub(r"\bforty\s+five\b", "forty-five", text, flags=re.IGNORECASE)


def today_from(messages: list[dict[str, Any]]) -> date:
    """Today as the system prompt states it ("Today is Wednesday November 25, 2026, ...")."""
    for message in messages:
        if message.get("role") == "system":
            found = _TODAY.search(str(message.get("content") or ""))
            if found:
                return datetime.strptime(found.group(1), "%B %d, %Y").date()
    return date.today()


def extract_slots(user_texts: list[str], today: date | None = None) -> Slots:
    today = today or date.today()
    slots = Slots()
    for text in map(normalise_spoken, user_texts):
        lowered = text.lower()
        for reason, keys in _REASONS.items():
            if any(key in lowered for key in keys):
                slots.reason = reason
        if (name := _NAME.search(text)) and name.group(1).split()[0].lower() not in _NOT_NAMES:
            slots.name = " ".join(word.capitalize() for word in name.group(1).split())
        if date_match := _DATE_WORDS.search(text):
            phrase = text[max(0, date_match.start() - 16) : date_match.end() + 24]
            try:
                read_date(phrase, today)  # only checks it parses
                slots.date = phrase.strip()
            except BookingRuleError:
                pass
        for time_match in _TIME.finditer(text):
            candidate = time_match.group(0).strip()
            clock_words = r"[ap]\.?m|noon|morning|afternoon|o'clock|^at |half past|quarter"
            if not re.search(clock_words, candidate, re.I):
                continue
            try:
                parse_time(candidate)
                slots.time = candidate
            except BookingRuleError:
                pass
        digits = _phone_digits(text)
        if len(digits) >= 10:
            slots.phone = digits[-10:] if len(digits) > 11 else digits
    return slots


class ScriptedReceptionist:
    """LanguageModel protocol; `offline` is reported in logs and the call records."""

    name = "scripted-receptionist (offline)"

    def __init__(self, clinic_name: str = "Sunrise Dental") -> None:
        self.clinic_name = clinic_name

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        text, tool_calls = self.reply(messages)
        for word in re.findall(r"\S+\s*", text):
            yield LlmChunk(text=word)
        yield LlmChunk(tool_calls=tool_calls, finish_reason="tool_calls" if tool_calls else "stop")

    def reply(self, messages: list[dict[str, Any]]) -> tuple[str, tuple[ToolCall, ...]]:
        last = messages[-1] if messages else {"role": "user", "content": ""}
        user_texts = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
        if last.get("role") == "tool":
            return self._after_tool(json.loads(last.get("content") or "{}"), messages), ()
        latest = user_texts[-1] if user_texts else ""
        if _HUMAN.search(latest) or latest.strip() == "(keypad) 0":
            return "Of course, let me transfer you to our front desk.", (
                ToolCall("call_transfer", "transfer_to_human", '{"reason": "caller asked"}'),
            )
        if _GOODBYE.search(latest):
            return f"Thank you for calling {self.clinic_name}. Goodbye!", (
                ToolCall("call_end", "end_call", '{"reason": "caller said goodbye"}'),
            )
        today = today_from(messages)
        slots = extract_slots(user_texts, today)
        if self._already_booked(messages) and not _DATE_WORDS.search(latest):
            return "Is there anything else I can help you with?", ()
        missing = slots.missing()
        if not missing:
            assert slots.date is not None and slots.time is not None  # nothing missing
            day = read_date(slots.date, today)
            arguments = {
                "patient_name": slots.name, "phone": slots.phone,
                "preferred_date": day.day.isoformat(),
                "preferred_time": parse_time(slots.time).strftime("%H:%M"), "reason": slots.reason,
            }  # fmt: skip
            said_back = f"{day.weekday_mismatch}. " if day.weekday_mismatch else ""
            return said_back + "Let me book that for you.", (
                ToolCall(f"call_book_{len(messages)}", "book_appointment", json.dumps(arguments)),
            )
        ask = {
            "reason": "Is this for a cleaning, a checkup, an emergency or a consultation?",
            "name": "May I have your full name, please?",
            "date": "What day would you like to come in?",
            "time": "And what time works best for you?",
            "phone": "What's the best phone number to reach you?",
        }[missing[0]]
        acknowledgement = (
            f"Sure, a {slots.reason}. " if slots.reason and missing[0] == "name" else ""
        )
        return acknowledgement + ask, ()

    @staticmethod
    def _already_booked(messages: list[dict[str, Any]]) -> bool:
        for message in messages:
            if message.get("role") == "tool":
                try:
                    if json.loads(message.get("content") or "{}").get("appointment_id"):
                        return True
                except ValueError:
                    continue
        return False

    def _after_tool(self, result: dict[str, Any], messages: list[dict[str, Any]]) -> str:
        if result.get("hanging_up") or result.get("transferring"):
            return ""
        if result.get("ok") and result.get("appointment_id"):
            return (
                f"You're all set, {result['patient_name']}: a {result['reason']} on "
                f"{result['when']}. We have your number as {_spoken_phone(result['phone'])}. "
                "Is there anything else I can help with?"
            )
        if result.get("ok") and "free_times" in result:
            times = ", ".join(result["free_times"][:3]) or "nothing that day"
            return f"I have {times}. Which would you like?"
        # Only the caller-facing `say`: the tool's `error` is written for a model ("offer a
        # time from tomorrow on") and must never be read out.
        problem = result.get("say") or "I couldn't book that."
        alternatives = result.get("alternatives") or []
        offer = ""
        if len(alternatives) > 1:
            offer = f" I could do {alternatives[0]} or {alternatives[1]}."
        elif alternatives:
            offer = f" I could do {alternatives[0]}."
        if _failed_bookings(messages) >= 2:
            # No third try at the same thing: concrete times, or a person.
            choice = "Would one of those suit you, or shall I" if offer else "Shall I"
            return (
                f"I'm sorry, that didn't work either. {problem}{offer} "
                f"{choice} put you through to a colleague?"
            )
        question = (
            "Could you tell me the number again, area code first?"
            if "phone number" in problem
            else "What time would suit you?"
        )
        return f"I'm sorry. {problem}{offer} {question}"


def _failed_bookings(messages: list[dict[str, Any]]) -> int:
    """Booking attempts refused since the caller's last success (or the call's start)."""
    failures = 0
    for message in messages:
        if message.get("role") != "tool":
            continue
        try:
            result = json.loads(message.get("content") or "{}")
        except ValueError:
            continue
        if result.get("ok") and result.get("appointment_id"):
            failures = 0
        elif result.get("ok") is False and "free_times" not in result:
            failures += 1
    return failures


def _spoken_phone(e164: str) -> str:
    digits = e164[-10:]
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
