"""Column types shared by the models (and mirrored, as plain SQLAlchemy types, by migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware instant, always stored as UTC and always read back as an aware UTC datetime.

    PostgreSQL's `timestamptz` already stores an instant, but SQLite has no time zones: its
    DATETIME is text, so an aware value would be written in whatever offset it carried and
    compared as text. Normalising to UTC (and refusing naive values, whose instant is
    unknowable) makes ordering, overlap queries and the UNIQUE slot constraint mean the same
    thing on both databases. DDL is `DateTime(timezone=True)`, which is what the migration uses.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; a time zone is required")
        utc = value.astimezone(UTC)
        # SQLite's DATETIME text format has no offset: store naive UTC so every row is
        # formatted identically (and so compares and de-duplicates correctly as text).
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
