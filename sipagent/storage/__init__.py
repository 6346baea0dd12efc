"""Persistence: appointments (no double booking, enforced by the database) and call records.

SQLAlchemy 2.x over SQLite (default: `sipagent.db` in the user data directory) or PostgreSQL
(psycopg 3); schema migrations with Alembic (`sipagent/migrations/`). See `database.py` for
engines and migrations, `models.py` for the schema, and for the async API the agent uses:
`bookings.py` (appointments), `call_records.py` (calls and turns), `transactions.py` (what
both share: retried transactions, linking a call's bookings to its call row).
"""

from sipagent.storage.bookings import (
    AppointmentNotFoundError,
    SqlBookingStore,
    slot_starts,
)
from sipagent.storage.call_records import (
    WORKER_DIED,
    CallRecorder,
    caller_number_from_uri,
    finalise_calls_of_dead_worker,
    worker_name,
)
from sipagent.storage.database import (
    DatabaseUnavailableError,
    configured_database_url,
    current_revision,
    downgrade,
    make_engine,
    prepare_database,
    shown_url,
    upgrade,
)

__all__ = [
    "WORKER_DIED",
    "AppointmentNotFoundError",
    "CallRecorder",
    "DatabaseUnavailableError",
    "SqlBookingStore",
    "caller_number_from_uri",
    "configured_database_url",
    "current_revision",
    "downgrade",
    "finalise_calls_of_dead_worker",
    "make_engine",
    "prepare_database",
    "shown_url",
    "slot_starts",
    "upgrade",
    "worker_name",
]
