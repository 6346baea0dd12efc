"""Where appointments live. The in-memory store serves the conversation engine until the
SQLAlchemy store (storage issue) implements the same protocol."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol


class SlotTakenError(Exception):
    """Another appointment overlaps the requested time."""


@dataclass(frozen=True, slots=True)
class Appointment:
    patient_name: str
    phone: str  # E.164
    start: datetime  # timezone-aware
    duration_minutes: int
    reason: str
    call_id: str = ""
    status: str = "booked"
    id: int = 0

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.duration_minutes)


class BookingStore(Protocol):
    async def book(self, appointment: Appointment) -> Appointment: ...

    async def booked_between(self, start: datetime, end: datetime) -> list[Appointment]: ...

    async def get(self, appointment_id: int) -> Appointment | None: ...

    async def find_by_phone(self, phone: str) -> list[Appointment]: ...

    async def cancel(self, appointment_id: int) -> Appointment:
        """Raises LookupError when there is no booked appointment with that id."""
        ...

    async def reschedule(
        self, appointment_id: int, new_start: datetime, *, call_id: str | None = None
    ) -> Appointment:
        """Atomically: the old booking is kept if the new time is taken (SlotTakenError)."""
        ...


class InMemoryBookingStore:
    """Atomic check-and-insert under one lock: no double booking between concurrent calls."""

    def __init__(self) -> None:
        self._appointments: list[Appointment] = []
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def book(self, appointment: Appointment) -> Appointment:
        async with self._lock:
            for existing in self._appointments:
                if existing.status == "booked" and (
                    existing.start < appointment.end and appointment.start < existing.end
                ):
                    raise SlotTakenError(f"{existing.start.isoformat()} is already booked")
            stored = replace(appointment, id=next(self._ids))
            self._appointments.append(stored)
            return stored

    async def booked_between(self, start: datetime, end: datetime) -> list[Appointment]:
        return [
            a for a in self._appointments
            if a.status == "booked" and a.start < end and start < a.end
        ]  # fmt: skip

    async def get(self, appointment_id: int) -> Appointment | None:
        return next((a for a in self._appointments if a.id == appointment_id), None)

    async def find_by_phone(self, phone: str) -> list[Appointment]:
        return sorted(
            (a for a in self._appointments if a.phone == phone and a.status == "booked"),
            key=lambda a: a.start,
        )

    async def cancel(self, appointment_id: int) -> Appointment:
        async with self._lock:
            return self._set_status(appointment_id, "cancelled")

    async def reschedule(
        self, appointment_id: int, new_start: datetime, *, call_id: str | None = None
    ) -> Appointment:
        async with self._lock:
            current = next(
                (a for a in self._appointments if a.id == appointment_id and a.status == "booked"),
                None,
            )
            if current is None:
                raise LookupError(f"no booked appointment with id {appointment_id}")
            moved = replace(current, start=new_start, id=0, call_id=call_id or current.call_id)
            if any(
                a.status == "booked" and a.id != appointment_id
                and a.start < moved.end and moved.start < a.end
                for a in self._appointments
            ):  # fmt: skip
                raise SlotTakenError(f"{new_start.isoformat()} is already booked")
            self._set_status(appointment_id, "rescheduled")
            stored = replace(moved, id=next(self._ids))
            self._appointments.append(stored)
            return stored

    def _set_status(self, appointment_id: int, status: str) -> Appointment:
        for index, appointment in enumerate(self._appointments):
            if appointment.id == appointment_id and appointment.status == "booked":
                self._appointments[index] = replace(appointment, status=status)
                return self._appointments[index]
        raise LookupError(f"no booked appointment with id {appointment_id}")

    @property
    def appointments(self) -> list[Appointment]:
        return list(self._appointments)
