"""The schema: calls and their turns, appointments and the slots they occupy.

Migrations (`migrations/versions/`) are written by hand against these models; the storage
tests compare the migrated database with this metadata so the two cannot drift apart.

Time columns are `UTCDateTime` (aware UTC in and out). Turn timing columns are floats in
milliseconds relative to the turn's earliest stamp (see `TurnRecord` and `timings_to_ms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sipagent.storage.types import UTCDateTime, utcnow

# Frozen copies of the value sets the CHECK constraints allow. They are duplicated in the
# first migration on purpose: a revision must keep describing the schema it created even
# after the application's lists change (that change needs its own revision).
APPOINTMENT_REASONS = ("cleaning", "checkup", "emergency", "consultation")
APPOINTMENT_STATUSES = ("booked", "cancelled", "rescheduled")
TURN_ROLES = ("user", "assistant", "system", "tool")
TIMING_FIELDS = (
    "caller_speech_end",
    "stt_final",
    "llm_first_token",
    "tts_first_byte",
    "first_reply_packet",
    "barge_in_onset",
    "barge_in_decision",
    "last_voiced_packet",
)

# Deterministic constraint names: Alembic's SQLite batch mode and every later
# `drop_constraint` need names, and unnamed constraints get database-chosen ones.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SLOT_UNIQUE_CONSTRAINT = "uq_appointment_slots_slot_start"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CallRecord(Base):
    """One SIP call as the agent saw it (`sipagent.sip.call.Call`)."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), unique=True)
    from_uri: Mapped[str] = mapped_column(String(512), default="")
    to_uri: Mapped[str] = mapped_column(String(512), default="")
    caller_number: Mapped[str | None] = mapped_column(String(32), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str] = mapped_column(String(64), default="")
    recording_path: Mapped[str | None] = mapped_column(String(1024))
    offline_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    # "host:pid" of the agent process that owned the call: when that process dies, the
    # supervisor ends exactly the calls it left open (`finalise_calls_of_dead_worker`). The
    # pid alone would be ambiguous when agents on several hosts share one database.
    worker: Mapped[str | None] = mapped_column(String(128), index=True)

    turns: Mapped[list[TurnRecord]] = relationship(
        back_populates="call", order_by="TurnRecord.index", cascade="all, delete-orphan"
    )


class TurnRecord(Base):
    """One utterance of a call (`sipagent.conversation.session.Turn`).

    The engine's TurnTimings are `loop.time()` stamps: a monotonic clock whose zero is
    arbitrary and differs per process, so absolute values would be meaningless once stored.
    Each `*_ms` column is therefore milliseconds after the turn's earliest non-null stamp
    (that stamp reads 0.0), which makes latencies directly readable (`first_reply_packet_ms`
    of a user-answer turn is the caller-perceived response time); `created_at` anchors the
    turn on the wall clock (`Turn.at`).
    """

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("call_id", "index"),
        CheckConstraint(_in("role", TURN_ROLES), name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("index", Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    heard_text: Mapped[str | None] = mapped_column(Text)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    caller_speech_end_ms: Mapped[float | None] = mapped_column(Float)
    stt_final_ms: Mapped[float | None] = mapped_column(Float)
    llm_first_token_ms: Mapped[float | None] = mapped_column(Float)
    tts_first_byte_ms: Mapped[float | None] = mapped_column(Float)
    first_reply_packet_ms: Mapped[float | None] = mapped_column(Float)
    barge_in_onset_ms: Mapped[float | None] = mapped_column(Float)
    barge_in_decision_ms: Mapped[float | None] = mapped_column(Float)
    last_voiced_packet_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )

    call: Mapped[CallRecord] = relationship(back_populates="turns")


class AppointmentRecord(Base):
    """A booking. `start_at`/`end_at` are UTC instants; `timezone` is the clinic's IANA zone
    name the appointment was made in, so it reads back as the same local wall time (and the
    same UTC offset rules across DST changes) it was booked as.

    `end_at` is redundant with `duration_minutes` but stored so overlap queries are a plain
    indexed comparison on both databases (SQLite and PostgreSQL do interval arithmetic
    differently). Rescheduling keeps history: the old row becomes `rescheduled` and the new
    one points back to it through `rescheduled_from_id`.

    `sip_call_id` keeps the SIP Call-ID of the call that booked it even when that call was
    never recorded (recording is best-effort); `call_id` is the FK, filled when the call row
    exists at booking time or later by `CallRecorder.record_call_start`.
    """

    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint(_in("reason", APPOINTMENT_REASONS), name="reason"),
        CheckConstraint(_in("status", APPOINTMENT_STATUSES), name="status"),
        CheckConstraint("duration_minutes > 0", name="duration_positive"),
        CheckConstraint("end_at > start_at", name="end_after_start"),
        # Portable E.164 sanity check (LIKE and length work alike on both databases);
        # full validation is `sipagent.booking.rules.normalise_phone`.
        CheckConstraint("phone LIKE '+%' AND length(phone) BETWEEN 9 AND 16", name="phone_e164"),
        Index("ix_appointments_status_start_at", "status", "start_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(16), index=True)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(16), default="booked")
    call_id: Mapped[int | None] = mapped_column(
        ForeignKey("calls.id", ondelete="SET NULL"), index=True
    )
    sip_call_id: Mapped[str] = mapped_column(String(255), default="", index=True)
    rescheduled_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("appointments.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    slots: Mapped[list[AppointmentSlot]] = relationship(
        back_populates="appointment", cascade="all, delete-orphan", passive_deletes=True
    )


class AppointmentSlot(Base):
    """One occupied slot-length block: the database's no-double-booking guarantee.

    A booked appointment owns one row per block it touches, inserted in the appointment's
    transaction; the UNIQUE constraint on `slot_start` makes a second booking of any of those
    blocks fail in the database itself, whichever process or connection attempts it. Rows
    exist only while the appointment is booked (cancel/reschedule delete them in the same
    transaction as the status change), so the constraint needs no partial-index support,
    which keeps it identical on SQLite and PostgreSQL (an exclusion constraint would be
    PostgreSQL-only).

    `slot_start` is the block's start in Unix seconds (UTC), an integer rather than a
    timestamp on purpose: SQLite keeps timestamps as text, where "15:00:00" and
    "15:00:00.000000" are different values, so uniqueness would hinge on every writer
    formatting alike. An integer is the same value for the same instant whoever writes it.
    """

    __tablename__ = "appointment_slots"
    __table_args__ = (UniqueConstraint("slot_start", name=SLOT_UNIQUE_CONSTRAINT),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_start: Mapped[int] = mapped_column(BigInteger)
    appointment_id: Mapped[int] = mapped_column(
        ForeignKey("appointments.id", ondelete="CASCADE"), index=True
    )

    appointment: Mapped[AppointmentRecord] = relationship(back_populates="slots")


def timings_to_ms(stamps: Mapping[str, float | None]) -> dict[str, float | None]:
    """TurnTimings stamps (seconds, one monotonic clock) -> `<name>_ms` column values:
    milliseconds after the earliest stamp present; all None when there is none."""
    present = [v for name in TIMING_FIELDS if (v := stamps.get(name)) is not None]
    origin = min(present) if present else 0.0
    return {
        f"{name}_ms": None if (v := stamps.get(name)) is None else round((v - origin) * 1000, 3)
        for name in TIMING_FIELDS
    }
