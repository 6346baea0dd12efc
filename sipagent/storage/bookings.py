"""SQL-backed booking store.

Every database operation runs in a worker thread (`asyncio.to_thread`) inside one short
transaction, so the event loop that paces RTP never waits on a disk or a lock.

No double booking is guaranteed by the database, not by this process: a booking inserts one
`appointment_slots` row per slot-length block it touches, in the same transaction as the
appointment, and the UNIQUE constraint on `slot_start` rejects the loser of any race, whether
it is another coroutine, thread, engine or agent process. The loser's whole transaction rolls
back, so a refused booking leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sipagent.booking.rules import REASONS
from sipagent.booking.store import Appointment, SlotTakenError
from sipagent.storage.database import WRITE_OPTIONS
from sipagent.storage.models import (
    SLOT_UNIQUE_CONSTRAINT,
    AppointmentRecord,
    AppointmentSlot,
    CallRecord,
)
from sipagent.storage.transactions import link_bookings_to_call, run_with_retries
from sipagent.storage.types import utcnow

log = logging.getLogger("sipagent.storage")

_E164 = re.compile(r"\+\d{8,15}")


class AppointmentNotFoundError(LookupError):
    """No booked appointment with that id (unknown, or already cancelled/rescheduled)."""


def slot_starts(start: datetime, end: datetime, slot_minutes: int) -> list[datetime]:
    """UTC starts of every `slot_minutes` block that [start, end) touches, ascending.

    The grid is aligned to the Unix epoch in UTC, i.e. to the clinic's wall clock whenever
    its UTC offset is a multiple of the slot length (true of every zone for 15-minute slots
    and of all but a few, such as Nepal's +05:45, for 30). An appointment off the grid
    occupies every block it touches: it may refuse a neighbour it does not really overlap,
    but it can never let two overlapping appointments both in.
    """
    step = slot_minutes * 60
    first = math.floor(start.timestamp() / step) * step
    last = end.timestamp()
    starts: list[datetime] = []
    at = first
    while at < last:
        starts.append(datetime.fromtimestamp(at, UTC))
        at += step
    return starts


def _is_slot_conflict(error: IntegrityError) -> bool:
    """True when the violated constraint is the slot UNIQUE (and not, say, a CHECK)."""
    diag = getattr(error.orig, "diag", None)  # psycopg names the constraint
    if diag is not None and getattr(diag, "constraint_name", None):
        return bool(diag.constraint_name == SLOT_UNIQUE_CONSTRAINT)
    message = str(error.orig)  # sqlite3: "UNIQUE constraint failed: appointment_slots.slot_start"
    return "appointment_slots.slot_start" in message or SLOT_UNIQUE_CONSTRAINT in message


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r stored; reading the appointment in UTC", name)
        return ZoneInfo("UTC")


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value.isoformat()}")


def _to_appointment(record: AppointmentRecord) -> Appointment:
    return Appointment(
        patient_name=record.patient_name,
        phone=record.phone,
        # The same instant, shown in the zone it was booked in: the tools read it back to the
        # caller as local wall time.
        start=record.start_at.astimezone(_zone(record.timezone)),
        duration_minutes=record.duration_minutes,
        reason=record.reason,
        call_id=record.sip_call_id,
        status=record.status,
        id=record.id,
    )


class SqlBookingStore:
    """The `BookingStore` protocol over SQLAlchemy (SQLite or PostgreSQL), plus
    `get`, `find_by_phone`, `cancel` and `reschedule`.

    `slot_minutes` is the occupancy grid (the clinic's `ClinicHours.slot_minutes`); it must
    divide a day. `timezone` names the zone stored for appointments whose start carries a
    fixed offset rather than a named zone (`ZoneInfo` keys are stored as they are).
    """

    def __init__(self, engine: Engine, slot_minutes: int = 30, *, timezone: str = "UTC") -> None:
        if slot_minutes <= 0 or (24 * 60) % slot_minutes:
            raise ValueError(f"slot_minutes must divide a day, got {slot_minutes}")
        ZoneInfo(timezone)  # fail at start-up on a misspelt zone, not on the first booking
        self.engine = engine
        self.slot_minutes = slot_minutes
        self.timezone = timezone
        # expire_on_commit=False: records are turned into Appointments after commit, in the
        # worker thread, without another round trip.
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(
            engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False
        )

    # -- BookingStore protocol ----------------------------------------------------------------
    async def book(self, appointment: Appointment) -> Appointment:
        """Store a booked appointment; SlotTakenError if any of its slots is taken."""
        self._validate(appointment.start, appointment.duration_minutes, appointment.reason)
        if not _E164.fullmatch(appointment.phone):
            raise ValueError(f"phone must be E.164 (+ and 8-15 digits), got {appointment.phone!r}")
        return await asyncio.to_thread(run_with_retries, lambda: self._book(appointment))

    async def booked_between(self, start: datetime, end: datetime) -> list[Appointment]:
        """Booked appointments overlapping [start, end), by start time."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        return await asyncio.to_thread(self._booked_between, start, end)

    # -- management ---------------------------------------------------------------------------
    async def get(self, appointment_id: int) -> Appointment | None:
        return await asyncio.to_thread(self._get, appointment_id)

    async def for_call(self, sip_call_id: str) -> list[Appointment]:
        """What one call booked (any status), by start time."""
        return await asyncio.to_thread(self._query, AppointmentRecord.sip_call_id == sip_call_id)

    async def find_by_phone(
        self, phone: str, *, include_inactive: bool = False
    ) -> list[Appointment]:
        """The appointments booked for an E.164 number (only `booked` ones unless
        `include_inactive`), by start time."""
        return await asyncio.to_thread(self._find_by_phone, phone, include_inactive)

    async def cancel(self, appointment_id: int) -> Appointment:
        """Cancel a booked appointment and free its slots, in one transaction."""
        return await asyncio.to_thread(run_with_retries, lambda: self._cancel(appointment_id))

    async def reschedule(
        self, appointment_id: int, new_start: datetime, *, call_id: str | None = None
    ) -> Appointment:
        """Move a booked appointment; returns the new booking (a new id).

        Atomic: the old row becomes `rescheduled` and frees its slots, and the new row takes
        its slots, in one transaction. If the new time is taken (SlotTakenError) nothing
        changes and the old booking stands. The new time may overlap the old one. `call_id`
        (the SIP Call-ID of the call asking) defaults to the original booking's call.
        """
        _require_aware(new_start, "new_start")
        return await asyncio.to_thread(
            run_with_retries, lambda: self._reschedule(appointment_id, new_start, call_id)
        )

    # -- worker-thread side --------------------------------------------------------------------
    def _validate(self, start: datetime, duration_minutes: int, reason: str) -> None:
        # The database's CHECK constraints would refuse these too, but an IntegrityError is a
        # poor message, and a CHECK failure must not be mistaken for a taken slot.
        _require_aware(start, "appointment start")
        if duration_minutes <= 0:
            raise ValueError(f"duration_minutes must be positive, got {duration_minutes}")
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")

    def _zone_name(self, start: datetime) -> str:
        key = getattr(start.tzinfo, "key", None)
        return key if isinstance(key, str) and key else self.timezone

    def _occupy(self, session: Session, record: AppointmentRecord) -> None:
        rows = [
            {"slot_start": int(slot.timestamp()), "appointment_id": record.id}
            for slot in slot_starts(record.start_at, record.end_at, self.slot_minutes)
        ]
        session.execute(insert(AppointmentSlot), rows)

    def _call_pk(self, session: Session, sip_call_id: str) -> int | None:
        if not sip_call_id:
            return None
        return session.scalar(select(CallRecord.id).where(CallRecord.sip_call_id == sip_call_id))

    def _insert_booked(
        self,
        session: Session,
        source: Appointment,
        start: datetime,
        rescheduled_from: int | None = None,
    ) -> AppointmentRecord:
        now = utcnow()
        record = AppointmentRecord(
            patient_name=source.patient_name,
            phone=source.phone,
            start_at=start,
            end_at=start + timedelta(minutes=source.duration_minutes),
            timezone=self._zone_name(start),
            duration_minutes=source.duration_minutes,
            reason=source.reason,
            status="booked",
            sip_call_id=source.call_id,
            call_id=self._call_pk(session, source.call_id),
            rescheduled_from_id=rescheduled_from,
            created_at=now,
            updated_at=now,
        )
        session.add(record)
        session.flush()  # assigns the id the slot rows point to
        self._occupy(session, record)
        return record

    def _book(self, appointment: Appointment) -> Appointment:
        try:
            with self._write.begin() as session:
                record = self._insert_booked(session, appointment, appointment.start)
        except IntegrityError as error:
            if _is_slot_conflict(error):
                raise SlotTakenError(
                    f"{appointment.start.isoformat()} overlaps a booked appointment"
                ) from None
            raise
        self._link_call_after_commit(record)
        return _to_appointment(record)

    def _link_call_after_commit(self, record: AppointmentRecord) -> None:
        if record.call_id is not None or not record.sip_call_id:
            return
        try:
            with self._write.begin() as session:
                link_bookings_to_call(session, record.sip_call_id)
        except Exception:  # the booking stands; only its link to the call record is missing
            log.exception("could not link appointment %d to call %s", record.id, record.sip_call_id)

    def _booked_between(self, start: datetime, end: datetime) -> list[Appointment]:
        with self._read() as session:
            records = session.scalars(
                select(AppointmentRecord)
                .where(
                    AppointmentRecord.status == "booked",
                    AppointmentRecord.start_at < end,
                    AppointmentRecord.end_at > start,
                )
                .order_by(AppointmentRecord.start_at, AppointmentRecord.id)
            ).all()
            return [_to_appointment(r) for r in records]

    def _get(self, appointment_id: int) -> Appointment | None:
        with self._read() as session:
            record = session.get(AppointmentRecord, appointment_id)
            return _to_appointment(record) if record is not None else None

    def _query(self, *conditions: Any) -> list[Appointment]:
        query = select(AppointmentRecord).where(*conditions)
        with self._read() as session:
            records = session.scalars(
                query.order_by(AppointmentRecord.start_at, AppointmentRecord.id)
            ).all()
            return [_to_appointment(r) for r in records]

    def _find_by_phone(self, phone: str, include_inactive: bool) -> list[Appointment]:
        query = select(AppointmentRecord).where(AppointmentRecord.phone == phone)
        if not include_inactive:
            query = query.where(AppointmentRecord.status == "booked")
        with self._read() as session:
            records = session.scalars(
                query.order_by(AppointmentRecord.start_at, AppointmentRecord.id)
            ).all()
            return [_to_appointment(r) for r in records]

    def _take_booked(self, session: Session, appointment_id: int, new_status: str) -> None:
        """Compare-and-set booked -> new_status and free the slots; two concurrent cancels
        (or a cancel racing a reschedule) cannot both succeed."""
        changed = session.execute(
            update(AppointmentRecord)
            .where(AppointmentRecord.id == appointment_id, AppointmentRecord.status == "booked")
            .values(status=new_status, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(changed, "rowcount", 0) != 1:
            raise AppointmentNotFoundError(f"no booked appointment with id {appointment_id}")
        session.execute(
            delete(AppointmentSlot)
            .where(AppointmentSlot.appointment_id == appointment_id)
            .execution_options(synchronize_session=False)
        )

    def _cancel(self, appointment_id: int) -> Appointment:
        with self._write.begin() as session:
            self._take_booked(session, appointment_id, "cancelled")
            record = session.get(AppointmentRecord, appointment_id, populate_existing=True)
            assert record is not None
        return _to_appointment(record)

    def _reschedule(
        self, appointment_id: int, new_start: datetime, call_id: str | None
    ) -> Appointment:
        try:
            with self._write.begin() as session:
                self._take_booked(session, appointment_id, "rescheduled")
                old = session.get(AppointmentRecord, appointment_id, populate_existing=True)
                assert old is not None
                source = _to_appointment(old)
                if call_id is not None:
                    source = replace(source, call_id=call_id)
                record = self._insert_booked(session, source, new_start, rescheduled_from=old.id)
        except IntegrityError as error:
            if _is_slot_conflict(error):
                raise SlotTakenError(
                    f"{new_start.isoformat()} overlaps a booked appointment"
                ) from None
            raise
        self._link_call_after_commit(record)
        return _to_appointment(record)
