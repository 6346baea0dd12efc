"""initial schema: calls, turns, appointments, appointment_slots

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Hand-written (then checked against the models by tests/unit/test_storage_migrations.py,
which autogenerate-compares the migrated database with sipagent.storage.models). Plain
CREATE/DROP TABLE only, so it runs unchanged on SQLite and PostgreSQL; later revisions that
alter tables must use `op.batch_alter_table` so SQLite can follow.

Check constraint names are wrapped in op.f(): they are already final, and without it the
models' naming convention (which env.py hands to Alembic) would prefix them a second time.

Value lists are frozen copies on purpose: this revision must keep describing the schema it
created even after the application's lists change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REASONS = ("cleaning", "checkup", "emergency", "consultation")
STATUSES = ("booked", "cancelled", "rescheduled")
ROLES = ("user", "assistant", "system", "tool")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def ts(name: str, nullable: bool = False, now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    """An instant: timestamptz on PostgreSQL; on SQLite, UTC text written by UTCDateTime."""
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if now else None,
    )


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sip_call_id", sa.String(255), nullable=False),
        sa.Column("from_uri", sa.String(512), nullable=False),
        sa.Column("to_uri", sa.String(512), nullable=False),
        sa.Column("caller_number", sa.String(32), nullable=True),
        ts("started_at"),
        ts("answered_at", nullable=True),
        ts("ended_at", nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=False),
        sa.Column("recording_path", sa.String(1024), nullable=True),
        sa.Column("offline_mode", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
        sa.UniqueConstraint("sip_call_id", name="uq_calls_sip_call_id"),
    )
    op.create_index("ix_calls_caller_number", "calls", ["caller_number"])

    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("heard_text", sa.Text(), nullable=True),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("caller_speech_end_ms", sa.Float(), nullable=True),
        sa.Column("stt_final_ms", sa.Float(), nullable=True),
        sa.Column("llm_first_token_ms", sa.Float(), nullable=True),
        sa.Column("tts_first_byte_ms", sa.Float(), nullable=True),
        sa.Column("first_reply_packet_ms", sa.Float(), nullable=True),
        sa.Column("barge_in_onset_ms", sa.Float(), nullable=True),
        sa.Column("barge_in_decision_ms", sa.Float(), nullable=True),
        sa.Column("last_voiced_packet_ms", sa.Float(), nullable=True),
        ts("created_at", now=True),
        sa.PrimaryKeyConstraint("id", name="pk_turns"),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_turns_call_id_calls", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("call_id", "index", name="uq_turns_call_id_index"),
        sa.CheckConstraint(_in("role", ROLES), name=op.f("ck_turns_role")),
    )

    op.create_table(
        "appointments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_name", sa.String(200), nullable=False),
        sa.Column("phone", sa.String(16), nullable=False),
        ts("start_at"),
        ts("end_at"),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=True),
        sa.Column("sip_call_id", sa.String(255), nullable=False),
        sa.Column("rescheduled_from_id", sa.Integer(), nullable=True),
        ts("created_at", now=True),
        ts("updated_at", now=True),
        sa.PrimaryKeyConstraint("id", name="pk_appointments"),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name="fk_appointments_call_id_calls", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["rescheduled_from_id"],
            ["appointments.id"],
            name="fk_appointments_rescheduled_from_id_appointments",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(_in("reason", REASONS), name=op.f("ck_appointments_reason")),
        sa.CheckConstraint(_in("status", STATUSES), name=op.f("ck_appointments_status")),
        sa.CheckConstraint("duration_minutes > 0", name=op.f("ck_appointments_duration_positive")),
        sa.CheckConstraint("end_at > start_at", name=op.f("ck_appointments_end_after_start")),
        sa.CheckConstraint(
            "phone LIKE '+%' AND length(phone) BETWEEN 9 AND 16",
            name=op.f("ck_appointments_phone_e164"),
        ),
    )
    op.create_index("ix_appointments_phone", "appointments", ["phone"])
    op.create_index("ix_appointments_call_id", "appointments", ["call_id"])
    op.create_index("ix_appointments_sip_call_id", "appointments", ["sip_call_id"])
    op.create_index("ix_appointments_status_start_at", "appointments", ["status", "start_at"])

    # The no-double-booking guarantee: one row per occupied slot, UNIQUE on its start
    # (Unix seconds, UTC: an integer is the same value for the same instant on any backend).
    op.create_table(
        "appointment_slots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot_start", sa.BigInteger(), nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_appointment_slots"),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name="fk_appointment_slots_appointment_id_appointments",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("slot_start", name="uq_appointment_slots_slot_start"),
    )
    op.create_index("ix_appointment_slots_appointment_id", "appointment_slots", ["appointment_id"])


def downgrade() -> None:
    # Children first: each table is dropped before the tables it references.
    op.drop_index("ix_appointment_slots_appointment_id", table_name="appointment_slots")
    op.drop_table("appointment_slots")
    for index in (
        "ix_appointments_status_start_at",
        "ix_appointments_sip_call_id",
        "ix_appointments_call_id",
        "ix_appointments_phone",
    ):
        op.drop_index(index, table_name="appointments")
    op.drop_table("appointments")
    op.drop_table("turns")
    op.drop_index("ix_calls_caller_number", table_name="calls")
    op.drop_table("calls")
