"""SQL-backed booking store and call recorder.

Both run every database operation in a worker thread (`asyncio.to_thread`) inside one short
transaction, so the event loop that paces RTP never waits on a disk or a lock.

No double booking is guaranteed by the database, not by this process: a booking inserts one
`appointment_slots` row per slot-length block it touches, in the same transaction as the
appointment, and the UNIQUE constraint on `slot_start` rejects the loser of any race, whether
it is another coroutine, thread, engine or agent process. The loser's whole transaction rolls
back, so a refused booking leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from sipagent.booking.rules import REASONS
from sipagent.booking.store import Appointment, SlotTakenError
from sipagent.storage.database import WRITE_OPTIONS
from sipagent.storage.models import (
    SLOT_UNIQUE_CONSTRAINT,
    AppointmentRecord,
    AppointmentSlot,
    CallRecord,
    TurnRecord,
    timings_to_ms,
)
from sipagent.storage.types import utcnow

log = logging.getLogger("sipagent.storage")

T = TypeVar("T")

RETRY_ATTEMPTS = 4
_E164 = re.compile(r"\+\d{8,15}")


class AppointmentNotFoundError(LookupError):
    """No booked appointment with that id (unknown, or already cancelled/rescheduled)."""


# ---------------------------------------------------------------------------------------------
# helpers


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


def _is_transient(error: OperationalError) -> bool:
    """Errors after which the same transaction, simply re-run, is expected to succeed."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    # PostgreSQL: deadlock_detected / serialization_failure. Slot rows are always inserted in
    # ascending order, so bookings cannot deadlock each other, but a reschedule (delete old
    # slots, insert new ones) racing a booking of the old slots can.
    if sqlstate in ("40P01", "40001"):
        return True
    message = str(error.orig).lower()
    return "database is locked" in message or "database is busy" in message  # SQLite


def run_with_retries(operation: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Run a whole transaction, re-running it (with jittered backoff) on transient errors."""
    for attempt in range(attempts):
        try:
            return operation()
        except OperationalError as error:
            if attempt == attempts - 1 or not _is_transient(error):
                raise
            log.info("transient database error, retrying: %s", error.orig)
            time.sleep(0.02 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def link_bookings_to_call(session: Session, sip_call_id: str) -> None:
    """Point this Call-ID's unlinked appointments at its call row (when there is one).

    The booking and the call row are written by different transactions that may overlap
    (the recorder is asynchronous), and under READ COMMITTED neither sees the other's
    uncommitted row, so linking inside either transaction can miss. Both sides therefore run
    this in a new transaction *after* their own commit: whichever commits second is then
    guaranteed to see the other's row, so the link is always made by one of them."""
    session.execute(
        update(AppointmentRecord)
        .where(
            AppointmentRecord.sip_call_id == sip_call_id,
            AppointmentRecord.call_id.is_(None),
        )
        .values(
            call_id=select(CallRecord.id)
            .where(CallRecord.sip_call_id == sip_call_id)
            .scalar_subquery()
        )
        .execution_options(synchronize_session=False)
    )


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


# ---------------------------------------------------------------------------------------------
# bookings


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


# ---------------------------------------------------------------------------------------------
# call records


class TurnLike(Protocol):
    """What `sipagent.conversation.session.Turn` offers (duck-typed: storage does not
    import the conversation engine)."""

    role: str
    text: str
    heard_text: str | None
    interrupted: bool
    at: float

    @property
    def timings(self) -> Any: ...  # TurnTimings: `.as_dict()` of loop.time() stamps


_CALLER = re.compile(r"sips?:([^@;>]+)@", re.IGNORECASE)


def caller_number_from_uri(uri: str) -> str | None:
    """The phone number in a From URI/header ('"Ann" <sip:+15551234567@pbx>;tag=1' ->
    '+15551234567'), or None when the user part is not a number (e.g. 'sip:alice@host')."""
    match = _CALLER.search(uri)
    if not match:
        return None
    user = re.sub(r"[\s().-]", "", match.group(1))
    return user if re.fullmatch(r"\+?\d{3,15}", user) else None


def _instant(value: datetime | float | None) -> datetime | None:
    """Epoch seconds (`time.time()`, as `Call` stores them) or a datetime -> aware UTC.
    A naive datetime is taken as local time, as Python's own `astimezone()` does."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


@dataclass(slots=True)
class _CallQueue:
    lock: asyncio.Lock
    users: int = 0


class CallRecorder:
    """Writes calls and their turns for the conversation engine.

    Never raises into the call: every `record_*` returns True when written and False (after
    logging why) when not. Writes for one call are applied in the order the coroutines were
    started, even when the engine fires them as tasks without awaiting (`spawn`), so a turn
    never races ahead of its call's row. A turn whose call row is missing (its start failed
    to record) is dropped with a warning.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write = sessionmaker(
            engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False
        )
        self._queues: dict[str, _CallQueue] = {}
        self._tasks: set[asyncio.Task[bool]] = set()

    # -- async API ------------------------------------------------------------------------------
    async def record_call_start(
        self,
        sip_call_id: str,
        *,
        from_uri: str = "",
        to_uri: str = "",
        caller_number: str | None = None,
        started_at: datetime | float | None = None,
        answered_at: datetime | float | None = None,
        recording_path: str | None = None,
        offline_mode: bool = False,
    ) -> bool:
        """Insert (or, when already there, update) the call row. `started_at` etc. take
        `Call`'s epoch floats or aware datetimes; `caller_number` defaults to the number in
        `from_uri`. Appointments booked under this Call-ID before the row existed are linked."""

        def operation() -> bool:
            fields: dict[str, Any] = {
                "from_uri": from_uri,
                "to_uri": to_uri,
                "caller_number": caller_number or caller_number_from_uri(from_uri),
                "started_at": _instant(started_at) or utcnow(),
                "answered_at": _instant(answered_at),
                "recording_path": recording_path,
                "offline_mode": offline_mode,
            }
            return self._start(sip_call_id, fields)

        return await self._run("call start", sip_call_id, operation)

    async def record_turn(self, sip_call_id: str, index: int, turn: TurnLike) -> bool:
        """Store turn number `index` (0-based, in call order) of the call; re-recording the
        same index overwrites it (so a retry never duplicates)."""

        def operation() -> bool:
            stamps: Mapping[str, float | None] = turn.timings.as_dict() if turn.timings else {}
            fields: dict[str, Any] = {
                "role": turn.role,
                "text": turn.text,
                "heard_text": turn.heard_text,
                "interrupted": bool(turn.interrupted),
                "created_at": _instant(turn.at) or utcnow(),
                **timings_to_ms(stamps),
            }
            return self._turn(sip_call_id, index, fields)

        return await self._run(f"turn {index}", sip_call_id, operation)

    async def record_call_end(
        self,
        sip_call_id: str,
        *,
        ended_at: datetime | float | None = None,
        end_reason: str = "",
        answered_at: datetime | float | None = None,
        recording_path: str | None = None,
    ) -> bool:
        """Close the call row (fields left None are not overwritten, except ended_at, which
        defaults to now)."""

        def operation() -> bool:
            fields: dict[str, Any] = {
                "ended_at": _instant(ended_at) or utcnow(),
                "end_reason": end_reason,
            }
            if answered_at is not None:
                fields["answered_at"] = _instant(answered_at)
            if recording_path is not None:
                fields["recording_path"] = recording_path
            return self._end(sip_call_id, fields)

        return await self._run("call end", sip_call_id, operation)

    def spawn(self, record: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        """Run a `record_*` coroutine in the background (the call does not wait for the
        database); the task is kept referenced until done. `drain()` awaits them all."""
        task = asyncio.get_running_loop().create_task(record)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every spawned write (at shutdown, or in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- ordering and error containment ---------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _in_call_order(self, sip_call_id: str) -> AsyncIterator[None]:
        # Registered before the first await: coroutines started in order queue on the lock
        # in that order (asyncio.Lock wakes waiters first-in, first-out).
        queue = self._queues.get(sip_call_id)
        if queue is None:
            queue = self._queues[sip_call_id] = _CallQueue(asyncio.Lock())
        queue.users += 1
        try:
            async with queue.lock:
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                self._queues.pop(sip_call_id, None)

    async def _run(self, what: str, sip_call_id: str, operation: Callable[[], bool]) -> bool:
        """Run `operation` (which also converts the arguments, so a bad value is contained
        too) as one retried transaction in a worker thread, in call order."""
        try:
            async with self._in_call_order(sip_call_id):
                return await asyncio.to_thread(run_with_retries, operation)
        except Exception:  # a lost record must never take the call down
            log.exception("could not record %s of call %s", what, sip_call_id)
            return False

    # -- worker-thread side ----------------------------------------------------------------------
    def _start(self, sip_call_id: str, fields: dict[str, Any]) -> bool:
        with self._write.begin() as session:
            record = session.scalar(select(CallRecord).where(CallRecord.sip_call_id == sip_call_id))
            if record is None:
                record = CallRecord(sip_call_id=sip_call_id, end_reason="", **fields)
                session.add(record)
            else:
                for name, value in fields.items():
                    if value is not None:
                        setattr(record, name, value)
        # After the commit, in its own transaction: see link_bookings_to_call for why. (A
        # failure here re-runs the whole, idempotent, start under run_with_retries.)
        with self._write.begin() as session:
            link_bookings_to_call(session, sip_call_id)
        return True

    def _turn(self, sip_call_id: str, index: int, fields: dict[str, Any]) -> bool:
        with self._write.begin() as session:
            call_pk = session.scalar(
                select(CallRecord.id).where(CallRecord.sip_call_id == sip_call_id)
            )
            if call_pk is None:
                log.warning("turn %d of unrecorded call %s dropped", index, sip_call_id)
                return False
            record = session.scalar(
                select(TurnRecord).where(TurnRecord.call_id == call_pk, TurnRecord.index == index)
            )
            if record is None:
                session.add(TurnRecord(call_id=call_pk, index=index, **fields))
            else:
                for name, value in fields.items():
                    setattr(record, name, value)
        return True

    def _end(self, sip_call_id: str, fields: dict[str, Any]) -> bool:
        with self._write.begin() as session:
            changed = session.execute(
                update(CallRecord)
                .where(CallRecord.sip_call_id == sip_call_id)
                .values(**fields)
                .execution_options(synchronize_session=False)
            )
            if getattr(changed, "rowcount", 0) != 1:
                log.warning("end of unrecorded call %s dropped", sip_call_id)
                return False
        return True
