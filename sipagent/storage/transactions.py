"""What both stores share: re-running a transaction on transient errors, and linking a call's
bookings to its call row (written by the two stores in transactions that may overlap)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sipagent.storage.models import AppointmentRecord, CallRecord

log = logging.getLogger("sipagent.storage")

T = TypeVar("T")

RETRY_ATTEMPTS = 4


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
