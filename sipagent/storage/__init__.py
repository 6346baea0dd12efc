"""Persistence: appointments (no double booking, enforced by the database) and call records.

SQLAlchemy 2.x over SQLite (default, `sqlite:///sipagent.db`) or PostgreSQL (psycopg 3);
schema migrations with Alembic (`migrations/`). See `database.py` for engines and
migrations, `models.py` for the schema, `store.py` for the async API the agent uses.
"""

from sipagent.storage.database import (
    DEFAULT_DATABASE_URL,
    configured_database_url,
    current_revision,
    downgrade,
    make_engine,
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
    "DEFAULT_DATABASE_URL",
    "AppointmentNotFoundError",
    "CallRecorder",
    "SqlBookingStore",
    "caller_number_from_uri",
    "configured_database_url",
    "current_revision",
    "downgrade",
    "make_engine",
    "slot_starts",
    "upgrade",
]
