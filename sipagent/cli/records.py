"""`sipagent calls` and `sipagent appointments`: what the database holds, for people."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sipagent.booking.rules import parse_date
from sipagent.cli.options import fail, open_database_or_fail, settings_options
from sipagent.config import AgentSettings
from sipagent.storage import SqlBookingStore, make_engine, shown_url
from sipagent.storage.models import AppointmentRecord, CallRecord, TurnRecord

calls_app = typer.Typer(help="Calls and their transcripts.")
appointments_app = typer.Typer(help="Appointments: list by day, cancel.")
out = Console()

_STAGES = (
    ("stt_final_ms", "STT final"),
    ("llm_first_token_ms", "LLM 1st token"),
    ("tts_first_byte_ms", "TTS 1st byte"),
    ("first_reply_packet_ms", "1st RTP"),
)


# What the record commands read: the database, and the clinic file for its time zone.
RECORD_SETTINGS = ("database_url", "clinic_file", "clinic_timezone")


def _session(settings: AgentSettings) -> Session:
    """A session on the existing database (never created or migrated here: a read command
    in the wrong folder or with a typo'd URL must say so, not show an empty table)."""
    open_database_or_fail(settings.database_url, create=False)
    out.print(f"database {shown_url(settings.database_url)}", highlight=False, soft_wrap=True)
    return Session(make_engine(settings.database_url))


def _zone(settings: AgentSettings) -> str:
    try:
        return settings.clinic_profile().timezone
    except ValueError as error:
        fail(f"{error} (fix the file, or --clinic-file / SIPAGENT_CLINIC_FILE)")


def parse_day(text: str, today: date) -> date:
    """'today', 'tomorrow', a weekday ('friday': the coming one) or 2026-12-03."""
    try:
        return parse_date(text, today)
    except ValueError:
        fail(f"--day {text!r} is not a day: use today, tomorrow, a weekday name or YYYY-MM-DD")


def _local(value: datetime | None, zone: str) -> str:
    return "-" if value is None else value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


@calls_app.command("list")
@settings_options(RECORD_SETTINGS)
def calls_list(
    settings: AgentSettings,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
) -> None:
    """Recent calls."""
    zone = _zone(settings)
    with _session(settings) as db:
        turn_counts = (
            select(TurnRecord.call_id, func.count().label("turns"))
            .group_by(TurnRecord.call_id)
            .subquery()
        )
        rows = db.execute(
            select(CallRecord, turn_counts.c.turns)
            .outerjoin(turn_counts, turn_counts.c.call_id == CallRecord.id)
            .order_by(CallRecord.started_at.desc())
            .limit(limit)
        ).all()
    table = Table(title=f"Calls ({zone})")
    for column in ("started", "caller", "seconds", "turns", "ended because", "call id"):
        table.add_column(column)
    for call, turns in rows:
        seconds = (
            f"{(call.ended_at - call.started_at).total_seconds():.0f}" if call.ended_at else "live"
        )
        table.add_row(
            _local(call.started_at, zone), call.caller_number or call.from_uri, seconds,
            str(turns or 0), call.end_reason + (" (offline)" if call.offline_mode else ""),
            call.sip_call_id,
        )  # fmt: skip
    out.print(table)


@calls_app.command("show")
@settings_options(RECORD_SETTINGS)
def calls_show(
    settings: AgentSettings,
    call_id: Annotated[str, typer.Argument(help="SIP Call-ID (or a prefix)")],
) -> None:
    """One call: its transcript and a per-turn latency timeline."""
    with _session(settings) as db:
        matches = db.scalars(
            select(CallRecord).where(CallRecord.sip_call_id.startswith(call_id))
        ).all()
        if len(matches) != 1:
            out.print(f"[red]{len(matches)} calls match {call_id!r}[/red]")
            raise typer.Exit(1)
        call = matches[0]
        turns = sorted(call.turns, key=lambda turn: turn.index)
        out.print(f"[bold]{call.sip_call_id}[/] from {call.from_uri} - {call.end_reason}")
        table = Table(title="Transcript and latency (ms after the caller stopped speaking)")
        table.add_column("who")
        table.add_column("said")
        for _, label in _STAGES:
            table.add_column(label, justify="right")
        for turn in turns:
            said = f"{turn.heard_text} [interrupted]" if turn.interrupted else turn.text
            stages = ["" for _ in _STAGES]
            start = turn.caller_speech_end_ms
            if turn.role == "assistant" and start is not None:
                stages = [
                    "-" if getattr(turn, name) is None else f"{getattr(turn, name) - start:.0f}"
                    for name, _ in _STAGES
                ]
            table.add_row("caller" if turn.role == "user" else "agent", said, *stages)
        out.print(table)


@appointments_app.command("list")
@settings_options(RECORD_SETTINGS)
def appointments_list(
    settings: AgentSettings,
    day: Annotated[
        str | None,
        typer.Option(help="today, tomorrow, a weekday or YYYY-MM-DD (the clinic's time zone)"),
    ] = None,
    include_cancelled: Annotated[bool, typer.Option(help="also cancelled/rescheduled")] = False,
) -> None:
    """Appointments of one day (default: from today on)."""
    zone = ZoneInfo(_zone(settings))
    today = datetime.now(zone).date()
    start_day = parse_day(day, today) if day else today
    start = datetime.combine(start_day, time(0), tzinfo=zone)
    query = select(AppointmentRecord).where(AppointmentRecord.start_at >= start)
    if day:
        query = query.where(AppointmentRecord.start_at < start + timedelta(days=1))
    if not include_cancelled:
        query = query.where(AppointmentRecord.status == "booked")
    with _session(settings) as db:
        records = db.scalars(query.order_by(AppointmentRecord.start_at)).all()
    table = Table(title=f"Appointments from {start_day}" + (" (that day)" if day else ""))
    for column in ("id", "when", "patient", "phone", "reason", "min", "status"):
        table.add_column(column)
    for record in records:
        table.add_row(
            str(record.id), _local(record.start_at, record.timezone)[:16], record.patient_name,
            record.phone, record.reason, str(record.duration_minutes), record.status,
        )  # fmt: skip
    out.print(table)


@appointments_app.command("cancel")
@settings_options(RECORD_SETTINGS)
def appointments_cancel(
    settings: AgentSettings, appointment_id: Annotated[int, typer.Argument()]
) -> None:
    """Cancel an appointment (its time becomes free again)."""
    open_database_or_fail(settings.database_url, create=False)
    store = SqlBookingStore(make_engine(settings.database_url))
    try:
        cancelled = asyncio.run(store.cancel(appointment_id))
    except LookupError as error:
        out.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    out.print(
        f"cancelled #{cancelled.id}: {cancelled.patient_name}, {cancelled.start:%Y-%m-%d %H:%M}"
    )
