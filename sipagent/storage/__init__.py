"""Persistence: appointments (no double booking, enforced by the database) and call records.

SQLAlchemy 2.x over SQLite (default: `sipagent.db` in the user data directory) or PostgreSQL
(psycopg 3); schema migrations with Alembic (`sipagent/migrations/`). See `database.py` for
engines and migrations, `models.py` for the schema, `store.py` for the async API the agent uses.
"""

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
from sipagent.storage.store import (
    AppointmentNotFoundError,
    CallRecorder,
    SqlBookingStore,
    caller_number_from_uri,
    slot_starts,
)

__all__ = [
    "AppointmentNotFoundError",
    "CallRecorder",
    "DatabaseUnavailableError",
    "SqlBookingStore",
    "caller_number_from_uri",
    "configured_database_url",
    "current_revision",
    "downgrade",
    "make_engine",
    "prepare_database",
    "shown_url",
    "slot_starts",
    "upgrade",
]
