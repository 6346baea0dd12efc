"""SQL-backed call recorder: calls and their turns, written for the conversation engine.

Every write runs in a worker thread (`asyncio.to_thread`) inside one short transaction, so the
event loop that paces RTP never waits on a disk or a lock. Turns, the frequent write (two per
exchange on every call), are gathered for `TURN_BATCH_SECONDS` and written for all calls in one
transaction: at 50 calls one transaction per turn kept a worker thread busy for ~11 % of the
process's samples, and that thread competes with the event loop for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import sessionmaker

from sipagent.storage.database import WRITE_OPTIONS
from sipagent.storage.models import CallRecord, TurnRecord, timings_to_ms
from sipagent.storage.transactions import link_bookings_to_call, run_with_retries
from sipagent.storage.types import utcnow

log = logging.getLogger("sipagent.storage")

TURN_BATCH_SECONDS = 0.25  # a turn's row may lag the conversation by this much; nobody waits


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


WORKER_DIED = "worker-died"


def worker_name(pid: int | None = None, host: str | None = None) -> str:
    """'host:pid' of an agent process (default: this one): what `CallRecord.worker` holds."""
    return f"{host or socket.gethostname()}:{os.getpid() if pid is None else pid}"


def finalise_calls_of_dead_worker(
    engine: Engine, worker: str, *, ended_at: datetime | None = None
) -> int:
    """End every call `worker` ('host:pid') left open: it died, so no BYE or record of the
    end will ever come from it. Returns how many calls were ended ("worker-died")."""

    def operation() -> int:
        with engine.execution_options(**WRITE_OPTIONS).begin() as connection:
            result = connection.execute(
                update(CallRecord)
                .where(CallRecord.worker == worker, CallRecord.ended_at.is_(None))
                .values(ended_at=ended_at or utcnow(), end_reason=WORKER_DIED)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    return run_with_retries(operation)


@dataclass(slots=True)
class _PendingTurn:
    sip_call_id: str
    index: int
    fields: dict[str, Any]
    written: asyncio.Future[bool]


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

    Every call row is stamped with `worker` (default: this process, 'host:pid'), so a
    supervisor can end the calls of a worker that died (`finalise_calls_of_dead_worker`).
    """

    def __init__(self, engine: Engine, *, worker: str | None = None) -> None:
        self.engine = engine
        self.worker = worker or worker_name()
        self._write = sessionmaker(
            engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False
        )
        self._queues: dict[str, _CallQueue] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self._pending_turns: list[_PendingTurn] = []
        self._turn_flush: asyncio.TimerHandle | None = None

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
                "worker": self.worker,
            }
            return self._start(sip_call_id, fields)

        return await self._run("call start", sip_call_id, operation)

    async def record_turn(self, sip_call_id: str, index: int, turn: TurnLike) -> bool:
        """Store turn number `index` (0-based, in call order) of the call; re-recording the
        same index overwrites it (so a retry never duplicates). Written with the other calls'
        turns of the next `TURN_BATCH_SECONDS`, in one transaction."""
        try:
            stamps: Mapping[str, float | None] = turn.timings.as_dict() if turn.timings else {}
            fields: dict[str, Any] = {
                "role": turn.role,
                "text": turn.text,
                "heard_text": turn.heard_text,
                "interrupted": bool(turn.interrupted),
                "created_at": _instant(turn.at) or utcnow(),
                **timings_to_ms(stamps),
            }
        except Exception:  # a bad value is contained like a failed write
            log.exception("could not record turn %d of call %s", index, sip_call_id)
            return False
        async with self._in_call_order(sip_call_id):
            loop = asyncio.get_running_loop()
            pending = _PendingTurn(sip_call_id, index, fields, loop.create_future())
            self._pending_turns.append(pending)
            if self._turn_flush is None:
                self._turn_flush = loop.call_later(TURN_BATCH_SECONDS, self._flush_turns)
            # Holding the call's order lock until written: its end cannot overtake the turn.
            return await pending.written

    def _flush_turns(self) -> None:
        self._turn_flush = None
        batch, self._pending_turns = self._pending_turns, []
        if batch:
            self.spawn(self._write_turns(batch))

    async def _write_turns(self, batch: list[_PendingTurn]) -> bool:
        try:
            written = await asyncio.to_thread(run_with_retries, lambda: self._turns(batch))
        except Exception:  # a lost record must never take the call down
            log.exception("could not record %d turn(s)", len(batch))
            written = [False] * len(batch)
        for pending, ok in zip(batch, written, strict=True):
            if not pending.written.done():
                pending.written.set_result(ok)
        return all(written)

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
        if self._turn_flush is not None:  # nobody waits for the batch window now
            self._turn_flush.cancel()
            self._flush_turns()
        while self._tasks or self._pending_turns:
            if not self._tasks:
                self._flush_turns()
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

    def _turns(self, batch: list[_PendingTurn]) -> list[bool]:
        """All the batch's turns in one transaction: one query for the call rows, one for the
        turns already there (re-recorded indexes), then one bulk INSERT and one bulk UPDATE.

        Bulk statements, not ORM objects: the unit of work (an object, its identity map
        entry and its flush bookkeeping per turn) was ~10 % of a 100-call worker's samples, in a
        worker thread holding the GIL the media clock needs."""
        call_ids = {p.sip_call_id for p in batch}
        indexes = {p.index for p in batch}
        with self._write.begin() as session:
            rows = session.execute(
                select(CallRecord.sip_call_id, CallRecord.id).where(
                    CallRecord.sip_call_id.in_(call_ids)
                )
            )
            call_pks: dict[str, int] = {sip_call_id: pk for sip_call_id, pk in rows}
            # Only the batch's indexes: loading every earlier turn of each call made each
            # batch's cost grow with the calls' length.
            existing: dict[tuple[int, int], int] = {
                (call_pk, index): turn_pk
                for turn_pk, call_pk, index in session.execute(
                    select(TurnRecord.id, TurnRecord.call_id, TurnRecord.index).where(
                        TurnRecord.call_id.in_(call_pks.values()), TurnRecord.index.in_(indexes)
                    )
                )
            } if call_pks else {}  # fmt: skip
            # The last recording of a (call, index) wins, as one write after another would.
            inserts: dict[tuple[int, int], dict[str, Any]] = {}
            updates: dict[int, dict[str, Any]] = {}
            written = []
            for pending in batch:
                call_pk = call_pks.get(pending.sip_call_id)
                if call_pk is None:
                    log.warning(
                        "turn %d of unrecorded call %s dropped", pending.index, pending.sip_call_id
                    )
                    written.append(False)
                    continue
                key = (call_pk, pending.index)
                turn_pk = existing.get(key)
                if turn_pk is None:
                    inserts[key] = {"call_id": call_pk, "index": pending.index, **pending.fields}
                else:
                    updates[turn_pk] = {"id": turn_pk, **pending.fields}
                written.append(True)
            if inserts:
                session.execute(insert(TurnRecord), list(inserts.values()))
            if updates:
                session.execute(update(TurnRecord), list(updates.values()))
        return written

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
