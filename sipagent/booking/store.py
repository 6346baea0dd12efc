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

    @property
    def appointments(self) -> list[Appointment]:
        return list(self._appointments)
