"""Storage pieces that need no server: slot grid, time handling, URL and engine set-up, the
call recorder's ordering and error containment (on SQLite files in tmp_path)."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

from sipagent.booking.rules import REASONS
from sipagent.booking.store import Appointment
from sipagent.conversation.turns import Turn, TurnTimings
from sipagent.storage import (
    WORKER_DIED,
    CallRecorder,
    SqlBookingStore,
    caller_number_from_uri,
    downgrade,
    finalise_calls_of_dead_worker,
    make_engine,
    slot_starts,
    upgrade,
    worker_name,
)
from sipagent.storage.database import configured_database_url, normalise_url
from sipagent.storage.models import (
    APPOINTMENT_REASONS,
    TIMING_FIELDS,
    AppointmentRecord,
    CallRecord,
    TurnRecord,
    timings_to_ms,
)

NY = ZoneInfo("America/New_York")


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- slot grid ------------------------------------------------------------------------------


def test_slot_starts_cover_every_touched_block():
    start = datetime(2026, 12, 1, 10, 0, tzinfo=NY)
    assert slot_starts(start, start + timedelta(minutes=60), 30) == [
        utc(2026, 12, 1, 15, 0),
        utc(2026, 12, 1, 15, 30),
    ]
    # off the grid: 10:10-10:40 touches both 10:00 and 10:30 (never under-reserves)
    odd = datetime(2026, 12, 1, 10, 10, tzinfo=NY)
    assert slot_starts(odd, odd + timedelta(minutes=30), 30) == [
        utc(2026, 12, 1, 15, 0),
        utc(2026, 12, 1, 15, 30),
    ]


def test_slot_grid_is_the_same_instant_whatever_the_zone():
    local = datetime(2026, 7, 1, 9, 30, tzinfo=NY)
    same = local.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert slot_starts(local, local + timedelta(minutes=30), 30) == slot_starts(
        same, same + timedelta(minutes=30), 30
    )


def test_store_rejects_a_bad_slot_length_or_zone(engine):
    with pytest.raises(ValueError, match="divide a day"):
        SqlBookingStore(engine, 7)
    with pytest.raises(KeyError):  # ZoneInfoNotFoundError
        SqlBookingStore(engine, 30, timezone="America/Nowhere")


def test_model_reasons_match_the_booking_rules():
    assert APPOINTMENT_REASONS == REASONS


# -- time and URL handling ------------------------------------------------------------------


def test_timings_are_stored_as_ms_after_the_earliest_stamp():
    stamps = TurnTimings(
        caller_speech_end=100.0, stt_final=100.25, llm_first_token=100.75, first_reply_packet=101.2
    ).as_dict()
    ms = timings_to_ms(stamps)
    assert ms["caller_speech_end_ms"] == 0.0 and ms["stt_final_ms"] == 250.0
    assert ms["first_reply_packet_ms"] == pytest.approx(1200.0)
    assert ms["tts_first_byte_ms"] is None
    assert set(ms) == {f"{name}_ms" for name in TIMING_FIELDS}
    assert set(TIMING_FIELDS) == set(stamps)  # every TurnTimings stamp has a column
    assert all(v is None for v in timings_to_ms({}).values())


@pytest.mark.parametrize(
    ("uri", "number"),
    [
        ('"Ann" <sip:+15551234567@pbx.example>;tag=1', "+15551234567"),
        ("sip:5551234567@10.0.0.1:5060", "5551234567"),
        ("<sips:+44-20-7946-0958@trunk>", "+442079460958"),
        ("sip:alice@example.com", None),
        ("anonymous", None),
    ],
)
def test_caller_number_from_uri(uri, number):
    assert caller_number_from_uri(uri) == number


def test_postgres_urls_are_pinned_to_psycopg3():
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"


def test_database_url_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("SIPAGENT_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    # The same file wherever a command runs: the user data directory, not the current folder.
    assert configured_database_url() == "sqlite:////srv/data/sipagent/sipagent.db"
    monkeypatch.setenv("DATABASE_URL", "sqlite:///other.db")
    assert configured_database_url() == "sqlite:///other.db"
    monkeypatch.setenv("SIPAGENT_DATABASE_URL", "sqlite:///mine.db")
    assert configured_database_url() == "sqlite:///mine.db"


def test_sqlite_engine_settings(engine):
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


async def test_naive_datetimes_are_refused(engine):
    store = SqlBookingStore(engine)
    naive = Appointment("Ann", "+15551234567", datetime(2026, 12, 1, 10), 30, "checkup")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.book(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.booked_between(datetime(2026, 12, 1), datetime(2026, 12, 2))


async def test_invalid_appointments_are_refused_before_the_database(engine):
    store = SqlBookingStore(engine)
    start = datetime(2026, 12, 1, 10, tzinfo=NY)
    with pytest.raises(ValueError, match="reason"):
        await store.book(Appointment("Ann", "+15551234567", start, 30, "whitening"))
    with pytest.raises(ValueError, match="duration"):
        await store.book(Appointment("Ann", "+15551234567", start, 0, "checkup"))
    with pytest.raises(ValueError, match=r"E\.164"):
        await store.book(Appointment("Ann", "555-123-4567", start, 30, "checkup"))
    assert await store.booked_between(start - timedelta(days=1), start + timedelta(days=1)) == []


async def test_database_check_constraints_back_the_validation(engine):
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    start = utc(2026, 12, 1, 15)
    with Session(engine) as session, pytest.raises(IntegrityError):
        session.add(
            AppointmentRecord(
                patient_name="Ann",
                phone="5551234567",
                start_at=start,
                end_at=start + timedelta(minutes=30),
                timezone="UTC",
                duration_minutes=30,
                reason="checkup",
                status="booked",
                sip_call_id="",
            )
        )
        session.commit()


# -- call recorder --------------------------------------------------------------------------


def _turns() -> list[Turn]:
    return [
        Turn(
            "assistant",
            "Thank you for calling, how can I help?",
            "Thank you for calling,",
            True,
            TurnTimings(
                tts_first_byte=50.0,
                first_reply_packet=50.08,
                barge_in_onset=51.5,
                barge_in_decision=51.7,
                last_voiced_packet=51.76,
            ),
            at=1_790_000_000.0,
        ),
        Turn(
            "user",
            "I'd like a cleaning",
            None,
            False,
            TurnTimings(caller_speech_end=52.0, stt_final=52.3),
            at=1_790_000_002.0,
        ),
        Turn(
            "assistant",
            "Sure, what day?",
            "Sure, what day?",
            False,
            TurnTimings(llm_first_token=52.6, tts_first_byte=52.8, first_reply_packet=52.9),
            at=1_790_000_002.5,
        ),
    ]


async def test_recorder_writes_a_call_with_its_turns(engine):
    recorder = CallRecorder(engine)
    assert await recorder.record_call_start(
        "abc@10.0.0.1",
        from_uri='"Ann" <sip:+15551234567@pbx>;tag=9',
        to_uri="sip:agent@clinic",
        started_at=1_790_000_000.0,
        answered_at=1_790_000_000.5,
        offline_mode=True,
    )
    for index, turn in enumerate(_turns()):
        assert await recorder.record_turn("abc@10.0.0.1", index, turn)
    assert await recorder.record_call_end(
        "abc@10.0.0.1",
        ended_at=1_790_000_030.0,
        end_reason="caller hung up",
        recording_path="/var/rec/abc.wav",
    )

    from sqlalchemy.orm import Session

    with Session(engine) as session:
        call = session.scalars(select(CallRecord)).one()
        assert call.caller_number == "+15551234567" and call.offline_mode
        assert call.started_at == datetime.fromtimestamp(1_790_000_000.0, UTC)
        assert call.answered_at == datetime.fromtimestamp(1_790_000_000.5, UTC)
        assert call.ended_at - call.started_at == timedelta(seconds=30)
        assert (call.end_reason, call.recording_path) == ("caller hung up", "/var/rec/abc.wav")
        turns = call.turns
        assert [t.role for t in turns] == ["assistant", "user", "assistant"]
        greeting = turns[0]
        assert greeting.interrupted and greeting.heard_text == "Thank you for calling,"
        assert greeting.tts_first_byte_ms == 0.0
        assert greeting.barge_in_decision_ms == pytest.approx(1700.0)
        assert turns[1].stt_final_ms == pytest.approx(300.0) and turns[1].llm_first_token_ms is None
        assert turns[2].created_at == datetime.fromtimestamp(1_790_000_002.5, UTC)


def test_worker_name_is_host_and_pid():
    import os
    import socket

    assert worker_name() == f"{socket.gethostname()}:{os.getpid()}"
    assert worker_name(42, "box") == "box:42"


async def test_a_dead_workers_open_calls_are_ended_and_no_others(engine):
    from sqlalchemy.orm import Session

    dead, alive = CallRecorder(engine, worker="box:1"), CallRecorder(engine, worker="box:2")
    assert CallRecorder(engine).worker == worker_name()
    await dead.record_call_start("dead-open", started_at=1_790_000_000.0)
    await dead.record_call_start("dead-closed", started_at=1_790_000_000.0)
    await dead.record_call_end("dead-closed", ended_at=1_790_000_010.0, end_reason="bye")
    await alive.record_call_start("alive-open", started_at=1_790_000_000.0)
    ended_at = utc(2026, 12, 3, 12, 0)

    assert finalise_calls_of_dead_worker(engine, "box:1", ended_at=ended_at) == 1
    assert finalise_calls_of_dead_worker(engine, "box:1") == 0  # nothing left open

    with Session(engine) as session:
        rows = {c.sip_call_id: c for c in session.scalars(select(CallRecord))}
    assert rows["dead-open"].worker == "box:1"
    assert (rows["dead-open"].ended_at, rows["dead-open"].end_reason) == (ended_at, WORKER_DIED)
    assert rows["dead-closed"].end_reason == "bye"
    assert rows["alive-open"].ended_at is None and rows["alive-open"].worker == "box:2"


async def test_spawned_records_land_in_order(engine):
    recorder = CallRecorder(engine)
    calls = [f"call-{n}" for n in range(5)]
    for sip_call_id in calls:  # fire and forget, as the conversation engine would
        recorder.spawn(recorder.record_call_start(sip_call_id, from_uri="sip:+15550001111@x"))
        for index, turn in enumerate(_turns()):
            recorder.spawn(recorder.record_turn(sip_call_id, index, turn))
        recorder.spawn(recorder.record_call_end(sip_call_id, end_reason="bye"))
    await recorder.drain()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM turns")).scalar() == 15
        ended = connection.execute(text("SELECT count(*) FROM calls WHERE end_reason = 'bye'"))
        assert ended.scalar() == 5
    assert recorder._queues == {}  # per-call ordering state is released


async def test_re_recording_a_turn_overwrites_it(engine):
    recorder = CallRecorder(engine)
    await recorder.record_call_start("c1")
    first, _, third = _turns()
    assert await recorder.record_turn("c1", 0, first)
    assert await recorder.record_turn("c1", 0, third)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT text FROM turns")).scalars().all()
    assert rows == ["Sure, what day?"]


async def test_recorder_failures_are_logged_not_raised(tmp_path, caplog):
    empty = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # never migrated
    recorder = CallRecorder(empty)
    with caplog.at_level(logging.ERROR, logger="sipagent.storage"):
        assert await recorder.record_call_start("x") is False
        assert await recorder.record_turn("x", 0, _turns()[0]) is False
        assert await recorder.record_call_end("x") is False
    assert "could not record call start of call x" in caplog.text
    empty.dispose()


async def test_recorder_contains_bad_arguments(engine, caplog):
    recorder = CallRecorder(engine)
    with caplog.at_level(logging.ERROR, logger="sipagent.storage"):
        assert await recorder.record_call_start("y", started_at=float("nan")) is False


async def test_turns_of_an_unrecorded_call_are_dropped(engine, caplog):
    recorder = CallRecorder(engine)
    with caplog.at_level(logging.WARNING, logger="sipagent.storage"):
        assert await recorder.record_turn("ghost", 0, _turns()[0]) is False
        assert await recorder.record_call_end("ghost") is False
    assert "unrecorded call ghost" in caplog.text


async def test_bookings_are_linked_to_their_call_whichever_is_written_first(engine):
    store = SqlBookingStore(engine, 30, timezone="America/New_York")
    recorder = CallRecorder(engine)
    start = datetime(2026, 12, 1, 10, tzinfo=NY)
    # booked before the call row exists (recording is best-effort and asynchronous)
    await store.book(Appointment("Ann", "+15551234567", start, 30, "checkup", call_id="late"))
    await recorder.record_call_start("late")
    # booked after
    await recorder.record_call_start("early")
    later = start + timedelta(hours=1)
    await store.book(Appointment("Bob", "+15551234568", later, 30, "checkup", call_id="early"))
    with engine.connect() as connection:
        links = connection.execute(
            text(
                "SELECT a.patient_name, c.sip_call_id FROM appointments a "
                "JOIN calls c ON c.id = a.call_id ORDER BY a.id"
            )
        ).all()
    assert [tuple(r) for r in links] == [("Ann", "late"), ("Bob", "early")]
    with engine.connect() as connection:
        assert connection.execute(select(TurnRecord)).all() == []


async def test_an_in_memory_database_can_be_migrated_through_its_engine():
    engine = make_engine("sqlite:///:memory:")
    upgrade(engine=engine)
    store = SqlBookingStore(engine, 30)
    start = datetime(2026, 12, 1, 10, tzinfo=NY)
    booked = await store.book(Appointment("Ann", "+15551234567", start, 30, "checkup"))
    assert (await store.get(booked.id)).start == start
    downgrade(None, "base", engine=engine)
    with engine.connect() as connection:
        assert (
            connection.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE name = 'appointments'"
            ).scalar()
            == 0
        )
    engine.dispose()


async def test_turns_of_many_calls_are_written_in_one_transaction(engine):
    # The frequent write is batched: one transaction for every call's turns of the window (a
    # transaction per turn cost a busy worker thread, and the GIL with it, at 50 calls). A turn
    # of an unrecorded call in the same batch is dropped alone.
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    recorder = CallRecorder(engine)
    call_ids = [f"call{i}@10.0.0.1" for i in range(5)]
    for call_id in call_ids:
        assert await recorder.record_call_start(call_id, from_uri="sip:+15551234567@pbx")
    commits: list[object] = []

    def on_commit(connection: object) -> None:
        commits.append(connection)

    event.listen(engine, "commit", on_commit)
    turns = _turns()
    results = await asyncio.gather(
        *(recorder.record_turn(c, i, t) for c in call_ids for i, t in enumerate(turns[:2])),
        recorder.record_turn("never-started@10.0.0.1", 0, turns[0]),
    )
    event.remove(engine, "commit", on_commit)
    # Two turns per call: the second of each call waits for the first (call order), so two
    # batches, not eleven transactions.
    assert results == [True] * 10 + [False]
    assert len(commits) == 2
    with Session(engine) as session:
        rows = session.scalars(select(TurnRecord)).all()
        assert len(rows) == 10
        assert sorted({r.index for r in rows}) == [0, 1]
