"""SqlBookingStore on SQLite and on a real PostgreSQL (started by tests/kit/pglib.py): no double
booking under concurrency from one engine, several engines and several OS processes;
overlaps; cancel; atomic reschedule; time zones across DST; the receptionist's tools on top.
"""

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from sipagent.booking.rules import ClinicHours
from sipagent.booking.store import Appointment, SlotTakenError
from sipagent.conversation.turns import Turn, TurnTimings
from sipagent.providers.base import ToolCall
from sipagent.storage import (
    AppointmentNotFoundError,
    CallRecorder,
    SqlBookingStore,
    make_engine,
    upgrade,
)
from sipagent.tools.receptionist import ReceptionistTools

pytest_plugins = ["tests.kit.pglib"]

NY = ZoneInfo("America/New_York")
TUESDAY_10 = datetime(2026, 12, 1, 10, 0, tzinfo=NY)
CONCURRENT = 50


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'agent.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine):
    return SqlBookingStore(engine, 30, timezone="America/New_York")


@pytest.fixture
async def wide_executor():
    """50 worker threads, so 50 booking attempts really are in flight at once (the default
    executor has min(32, cpus + 4) workers)."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(CONCURRENT)
    loop.set_default_executor(executor)
    yield executor
    executor.shutdown(wait=True)


def appt(
    start: datetime,
    reason: str = "checkup",
    minutes: int = 30,
    name: str = "Ann",
    phone: str = "+15551234567",
    call_id: str = "",
) -> Appointment:
    return Appointment(name, phone, start, minutes, reason, call_id=call_id)


def count(engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def outcome_counts(results: list) -> tuple[int, int]:
    unexpected = [r for r in results if not isinstance(r, (Appointment, SlotTakenError))]
    assert not unexpected, unexpected
    booked = sum(isinstance(r, Appointment) for r in results)
    return booked, sum(isinstance(r, SlotTakenError) for r in results)


# -- concurrency ----------------------------------------------------------------------------


async def test_fifty_concurrent_attempts_on_one_slot_book_once(store, engine, wide_executor):
    attempts = [
        store.book(appt(TUESDAY_10, name=f"Caller {n}", call_id=f"c{n}")) for n in range(CONCURRENT)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert outcome_counts(results) == (1, CONCURRENT - 1)
    assert count(engine, "appointments") == 1 and count(engine, "appointment_slots") == 1
    [booked] = await store.booked_between(TUESDAY_10, TUESDAY_10 + timedelta(hours=1))
    assert booked == next(r for r in results if isinstance(r, Appointment))


async def test_fifty_attempts_from_separate_engines_book_once(db_url, wide_executor):
    """Five engines (own pools, own connections) stand in for five agent processes."""
    engines = [make_engine(db_url) for _ in range(5)]
    try:
        stores = [SqlBookingStore(e, 30) for e in engines]
        attempts = [
            stores[n % 5].book(appt(TUESDAY_10, reason="cleaning", minutes=60, name=f"P{n}"))
            for n in range(CONCURRENT)
        ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert outcome_counts(results) == (1, CONCURRENT - 1)
        assert count(engines[0], "appointments") == 1
        assert count(engines[0], "appointment_slots") == 2  # 60 minutes = two 30-min slots
    finally:
        for e in engines:
            e.dispose()


async def test_overlapping_different_starts_race_to_one_winner(store, engine, wide_executor):
    cleaning_10 = [store.book(appt(TUESDAY_10, "cleaning", 60)) for _ in range(CONCURRENT // 2)]
    checkup_1030 = [
        store.book(appt(TUESDAY_10 + timedelta(minutes=30))) for _ in range(CONCURRENT // 2)
    ]
    results = await asyncio.gather(*cleaning_10, *checkup_1030, return_exceptions=True)
    assert outcome_counts(results)[0] == 1
    assert count(engine, "appointments") == 1


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    from datetime import datetime
    from sipagent.booking.store import Appointment, SlotTakenError
    from sipagent.storage import SqlBookingStore, make_engine

    url, start, go_at, tries = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    engine = make_engine(url)
    store = SqlBookingStore(engine, 30)

    async def main():
        time.sleep(max(0.0, go_at - time.time()))  # every process starts at the same instant
        appointment = Appointment("Proc", "+15551234567", datetime.fromisoformat(start), 30,
                                  "checkup")
        results = await asyncio.gather(*(store.book(appointment) for _ in range(tries)),
                                       return_exceptions=True)
        booked = sum(isinstance(r, Appointment) for r in results)
        taken = sum(isinstance(r, SlotTakenError) for r in results)
        other = [repr(r) for r in results if not isinstance(r, (Appointment, SlotTakenError))]
        print(json.dumps({"booked": booked, "taken": taken, "other": other}))

    asyncio.run(main())
    engine.dispose()
    """
)


def test_separate_agent_processes_book_a_slot_once(db_url, engine):
    processes, tries = 5, 10
    import time

    go_at = time.time() + 4.0  # past every child's import and engine set-up
    argv = [sys.executable, "-c", WORKER, db_url, TUESDAY_10.isoformat(), str(go_at), str(tries)]
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=90)
        assert child.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(not r["other"] for r in reports), reports
    assert sum(r["booked"] for r in reports) == 1
    assert sum(r["taken"] for r in reports) == processes * tries - 1
    assert count(engine, "appointments") == 1


WRITER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from datetime import datetime, timedelta
    from sipagent.booking.store import Appointment
    from sipagent.storage import CallRecorder, SqlBookingStore, make_engine

    url, start, go_at, worker, per_worker = (
        sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    )
    engine = make_engine(url)
    store, recorder = SqlBookingStore(engine, 30), CallRecorder(engine)

    async def one(n):
        call_id = f"w{worker}-c{n}"
        started = await recorder.record_call_start(call_id, from_uri="sip:+15551230000@pbx")
        slot = datetime.fromisoformat(start) + timedelta(days=worker, minutes=30 * n)
        booked = await store.book(Appointment("Proc", "+15551234567", slot, 30, "checkup",
                                              call_id=call_id))
        ended = await recorder.record_call_end(call_id, end_reason="bye")
        return started and ended and booked.id is not None

    async def main():
        time.sleep(max(0.0, go_at - time.time()))  # both processes start at the same instant
        results = await asyncio.gather(*(one(n) for n in range(per_worker)),
                                       return_exceptions=True)
        print(json.dumps({"ok": sum(r is True for r in results),
                          "failed": [repr(r) for r in results if r is not True]}))

    asyncio.run(main())
    engine.dispose()
    """
)


def test_two_worker_processes_write_at_once_without_a_locked_error(db_url, engine):
    """What `serve --workers 2` does to one database: both book different slots and record
    their calls at the same moment; every write lands (waits and retries stay inside)."""
    import time

    per_worker, go_at = 8, time.time() + 4.0  # past both children's imports
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                db_url,
                TUESDAY_10.isoformat(),
                str(go_at),
                str(worker),
                str(per_worker),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(2)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=90)
        assert child.returncode == 0, err
        assert "database is locked" not in err, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["failed"] for r in reports] == [[], []], reports
    assert [r["ok"] for r in reports] == [per_worker, per_worker]
    assert count(engine, "appointments") == 2 * per_worker
    assert count(engine, "calls") == 2 * per_worker


# -- overlaps, cancel, reschedule -------------------------------------------------------------


async def test_overlapping_but_different_starts_conflict(store):
    await store.book(appt(TUESDAY_10, "cleaning", 60))  # 10:00-11:00
    with pytest.raises(SlotTakenError):
        await store.book(appt(TUESDAY_10 + timedelta(minutes=30)))  # 10:30 checkup
    with pytest.raises(SlotTakenError):
        await store.book(appt(TUESDAY_10 - timedelta(minutes=30), "cleaning", 60))  # 9:30-10:30
    adjacent = await store.book(appt(TUESDAY_10 + timedelta(hours=1)))  # 11:00 is free
    assert adjacent.start == TUESDAY_10 + timedelta(hours=1)
    earlier = await store.book(appt(TUESDAY_10 - timedelta(minutes=30)))  # 9:30-10:00 too
    assert earlier.id


async def test_a_refused_booking_writes_nothing(store, engine):
    await store.book(appt(TUESDAY_10 + timedelta(minutes=30)))  # 10:30
    before = count(engine, "appointments"), count(engine, "appointment_slots")
    with pytest.raises(SlotTakenError):
        # 10:00-11:00: its first slot is free, its second is not: the first must not stick
        await store.book(appt(TUESDAY_10, "cleaning", 60))
    assert (count(engine, "appointments"), count(engine, "appointment_slots")) == before
    await store.book(appt(TUESDAY_10))  # and 10:00 alone is still bookable


async def test_the_database_itself_refuses_a_second_row_for_a_slot(store, engine):
    booked = await store.book(appt(TUESDAY_10))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text("INSERT INTO appointment_slots (slot_start, appointment_id) VALUES (:s, :a)"),
            {"s": int(TUESDAY_10.timestamp()), "a": booked.id},
        )


async def test_cancel_frees_the_slot(store, engine):
    first = await store.book(appt(TUESDAY_10, "cleaning", 60))
    cancelled = await store.cancel(first.id)
    assert cancelled.status == "cancelled" and cancelled.id == first.id
    assert count(engine, "appointment_slots") == 0
    assert await store.booked_between(TUESDAY_10, TUESDAY_10 + timedelta(hours=1)) == []
    again = await store.book(appt(TUESDAY_10 + timedelta(minutes=30), name="Bob"))
    assert again.id != first.id
    with pytest.raises(AppointmentNotFoundError):
        await store.cancel(first.id)  # already cancelled
    with pytest.raises(AppointmentNotFoundError):
        await store.cancel(999_999)


async def test_concurrent_cancels_succeed_once(store, wide_executor):
    booked = await store.book(appt(TUESDAY_10))
    results = await asyncio.gather(
        *(store.cancel(booked.id) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(r, Appointment) for r in results) == 1
    assert all(isinstance(r, (Appointment, AppointmentNotFoundError)) for r in results)


async def test_reschedule_moves_the_booking_and_keeps_history(store, engine):
    old = await store.book(appt(TUESDAY_10, "cleaning", 60, call_id="call-1"))
    new = await store.reschedule(old.id, TUESDAY_10 + timedelta(minutes=30), call_id="call-2")
    assert new.id != old.id and new.status == "booked"
    assert new.start == TUESDAY_10 + timedelta(minutes=30) and new.duration_minutes == 60
    assert (new.patient_name, new.phone, new.reason) == (old.patient_name, old.phone, old.reason)
    assert new.call_id == "call-2"
    assert (await store.get(old.id)).status == "rescheduled"
    with engine.connect() as connection:
        link = connection.execute(
            text("SELECT rescheduled_from_id FROM appointments WHERE id = :id"), {"id": new.id}
        ).scalar_one()
    assert link == old.id
    await store.book(appt(TUESDAY_10, name="Bob", phone="+15550000001"))  # 10:00 is free again
    assert [a.id for a in await store.find_by_phone(old.phone)] == [new.id]
    history = await store.find_by_phone(old.phone, include_inactive=True)
    assert {a.status for a in history} == {"booked", "rescheduled"}


async def test_reschedule_onto_a_taken_slot_changes_nothing(store, engine):
    mine = await store.book(appt(TUESDAY_10))
    await store.book(appt(TUESDAY_10 + timedelta(hours=4), name="Bob", phone="+15559876543"))
    before = count(engine, "appointments"), count(engine, "appointment_slots")
    with pytest.raises(SlotTakenError):
        await store.reschedule(mine.id, TUESDAY_10 + timedelta(hours=4))
    assert (count(engine, "appointments"), count(engine, "appointment_slots")) == before
    assert (await store.get(mine.id)).status == "booked"
    with pytest.raises(SlotTakenError):
        await store.book(appt(TUESDAY_10, name="Eve"))  # the old booking still holds 10:00
    with pytest.raises(AppointmentNotFoundError):
        await store.reschedule(999_999, TUESDAY_10 + timedelta(days=1))


async def test_racing_cancel_and_reschedule_one_wins(store, engine, wide_executor):
    booked = await store.book(appt(TUESDAY_10))
    later = TUESDAY_10 + timedelta(hours=2)
    results = await asyncio.gather(
        store.cancel(booked.id), store.reschedule(booked.id, later), return_exceptions=True
    )
    assert sum(isinstance(r, Appointment) for r in results) == 1
    active = await store.booked_between(TUESDAY_10, TUESDAY_10 + timedelta(hours=3))
    assert count(engine, "appointment_slots") == len(active) <= 1


async def test_find_by_phone(store):
    a = await store.book(appt(TUESDAY_10 + timedelta(days=1)))
    b = await store.book(appt(TUESDAY_10))
    await store.book(appt(TUESDAY_10 + timedelta(hours=1), phone="+15550000000"))
    assert [x.id for x in await store.find_by_phone("+15551234567")] == [b.id, a.id]
    assert await store.find_by_phone("+15559999999") == []


# -- time zones -------------------------------------------------------------------------------


async def test_timezone_round_trip_across_dst_changes(store, engine):
    instants = [
        datetime(2026, 3, 6, 9, 0, tzinfo=NY),  # EST (-05:00), Friday before spring forward
        datetime(2026, 3, 9, 9, 0, tzinfo=NY),  # EDT (-04:00), Monday after
        datetime(2026, 10, 30, 9, 0, tzinfo=NY),  # EDT, Friday before fall back
        datetime(2026, 11, 2, 9, 0, tzinfo=NY),  # EST, Monday after
    ]
    booked = [await store.book(appt(start)) for start in instants]
    for original, stored in zip(instants, booked, strict=True):
        read = await store.get(stored.id)
        assert read.start == original  # the same instant...
        assert read.start.utcoffset() == original.utcoffset()  # ...and the same local offset
        assert (read.start.hour, read.start.minute) == (9, 0)  # read back as 9 am local
        assert read.start.tzinfo.key == "America/New_York"
    with engine.connect() as connection:
        stored_utc = connection.execute(
            text("SELECT start_at, timezone FROM appointments ORDER BY start_at")
        ).all()
    hours = [
        (row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(row[0])).hour
        for row in stored_utc
    ]
    if engine.dialect.name == "sqlite":  # text in UTC; PostgreSQL returns timestamptz
        assert hours == [14, 13, 13, 14]
    assert {row[1] for row in stored_utc} == {"America/New_York"}
    week = await store.booked_between(instants[0], instants[1] + timedelta(minutes=1))
    assert [a.start for a in week] == instants[:2]


async def test_the_same_instant_in_any_zone_is_the_same_slot(store):
    await store.book(appt(datetime(2026, 12, 1, 15, 0, tzinfo=UTC)))  # = 10:00 EST
    with pytest.raises(SlotTakenError):
        await store.book(appt(TUESDAY_10))
    with pytest.raises(SlotTakenError):
        await store.book(appt(TUESDAY_10.astimezone(timezone(timedelta(hours=1)))))
    [stored] = await store.booked_between(TUESDAY_10, TUESDAY_10 + timedelta(minutes=30))
    # a fixed-offset start is stored with the store's clinic zone and read back in it
    assert stored.start == TUESDAY_10 and stored.start.tzinfo.key == "America/New_York"


async def test_booked_between_is_an_overlap_query(store):
    await store.book(appt(TUESDAY_10, "cleaning", 60))
    assert (
        len(
            await store.booked_between(
                TUESDAY_10 + timedelta(minutes=59), TUESDAY_10 + timedelta(hours=2)
            )
        )
        == 1
    )
    assert (
        await store.booked_between(TUESDAY_10 + timedelta(hours=1), TUESDAY_10 + timedelta(hours=2))
        == []
    )
    assert await store.booked_between(TUESDAY_10 - timedelta(hours=1), TUESDAY_10) == []


# -- call records ------------------------------------------------------------------------------


async def test_call_recorder_writes_a_call_with_its_turns(engine, store):
    recorder = CallRecorder(engine)
    sip_call_id = "a84b4c76e66710@pc33.example"
    recorder.spawn(
        recorder.record_call_start(
            sip_call_id,
            from_uri="<sip:+15551234567@trunk>;tag=1",
            to_uri="sip:agent@clinic",
            started_at=1_790_000_000.0,
            answered_at=1_790_000_001.0,
        )
    )
    turns = [
        Turn("assistant", "Sunrise Dental, how can I help?", "Sunrise Dental,", True,
             TurnTimings(tts_first_byte=10.0, first_reply_packet=10.1, barge_in_onset=11.0,
                         barge_in_decision=11.3, last_voiced_packet=11.35)),
        Turn("user", "Book me a cleaning", None, False,
             TurnTimings(caller_speech_end=12.0, stt_final=12.2)),
    ]  # fmt: skip
    for index, turn in enumerate(turns):
        recorder.spawn(recorder.record_turn(sip_call_id, index, turn))
    await store.book(appt(TUESDAY_10, call_id=sip_call_id))
    recorder.spawn(
        recorder.record_call_end(sip_call_id, ended_at=1_790_000_060.0, end_reason="bye")
    )
    await recorder.drain()
    with engine.connect() as connection:
        call = connection.execute(
            text("SELECT id, caller_number, end_reason FROM calls WHERE sip_call_id = :s"),
            {"s": sip_call_id},
        ).one()
        rows = connection.execute(
            text(
                'SELECT "index", role, interrupted, heard_text, barge_in_decision_ms, '
                'stt_final_ms FROM turns WHERE call_id = :c ORDER BY "index"'
            ),
            {"c": call.id},
        ).all()
        linked = connection.execute(text("SELECT call_id FROM appointments")).scalar_one()
    assert (call.caller_number, call.end_reason) == ("+15551234567", "bye")
    assert [(r[0], r[1], bool(r[2]), r[3]) for r in rows] == [
        (0, "assistant", True, "Sunrise Dental,"),
        (1, "user", False, None),
    ]
    assert rows[0][4] == pytest.approx(1300.0) and rows[1][5] == pytest.approx(200.0)
    assert linked == call.id


# -- the receptionist's tools over the SQL store --------------------------------------------


async def test_receptionist_tools_over_the_sql_store(store, engine, wide_executor):
    hours = ClinicHours(timezone="America/New_York")
    wednesday = datetime(2026, 11, 25, 10, 0, tzinfo=hours.zone)
    tools = ReceptionistTools(store, hours, clock=lambda: wednesday)
    booking = {
        "patient_name": "Maria Lopez",
        "phone": "555-123-4567",
        "preferred_date": "2026-12-01",
        "preferred_time": "15:00",
        "reason": "cleaning",
    }
    call = ToolCall(id="t1", name="book_appointment", arguments=json.dumps(booking))
    results = await asyncio.gather(*(tools.execute(call, f"call-{n}") for n in range(10)))
    outcomes = [json.loads(r.content) for r in results]
    assert sum(o["ok"] for o in outcomes) == 1
    winner = next(o for o in outcomes if o["ok"])
    assert winner["when"] == "Tuesday December 1 at 3:00 PM"
    refused = next(o for o in outcomes if not o["ok"])
    assert refused["error"] == "that time is already taken" and refused["alternatives"]
    assert "Tuesday December 1 at 3:00 PM" not in refused["alternatives"]
    assert "Tuesday December 1 at 3:30 PM" not in refused["alternatives"]  # inside the cleaning
    assert count(engine, "appointments") == 1


def test_threads_without_an_event_loop_share_the_guarantee(store, engine):
    """Several threads each running their own loop (as separate agent workers might)."""
    barrier = threading.Barrier(8)
    results: list = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            result = asyncio.run(store.book(appt(TUESDAY_10)))
        except SlotTakenError as error:
            result = error
        with lock:
            results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcome_counts(results) == (1, 7)
