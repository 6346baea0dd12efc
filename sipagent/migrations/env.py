"""Alembic environment for sipagent.

The database URL comes, in order, from: a connection handed over in
`config.attributes["connection"]` (tests), `config.attributes["database_url"]`
(`sipagent.storage.database.upgrade`), `alembic -x url=...`, `sqlalchemy.url` in an ini file,
and finally the application's own settings (`configured_database_url`: AgentSettings /
SIPAGENT_DATABASE_URL / DATABASE_URL / SQLite in the user data directory).
Nothing is hard-coded here.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text

from sipagent.storage.database import (
    WRITE_OPTIONS,
    configured_database_url,
    make_engine,
    normalise_url,
)
from sipagent.storage.models import Base

config = context.config

# Only the `alembic` command line brings an ini file; when the agent migrates itself
# (`upgrade()` builds the Config in code) its own logging setup must be left alone.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 0x5150A6E7


def _database_url() -> str:
    if config.attributes.get("database_url") is not None:
        return str(config.attributes["database_url"].render_as_string(hide_password=False))
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return x_url
    ini_url = config.get_main_option("sqlalchemy.url")
    return ini_url or configured_database_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: autogenerate must emit batch (copy-and-move)
        # operations there; on PostgreSQL they run as plain ALTERs.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Alembic treats SQLite's DDL as not transactional, so without this each migration
        # commits on its own and a second process can take the write lock between two of
        # them, read the older revision and run the newer migration again ("duplicate
        # column name: worker" when four agents started together). SQLite's DDL is
        # transactional: one BEGIN IMMEDIATE around the whole upgrade serialises them.
        transactional_ddl=True,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several agents may start (and migrate) at once: serialise them. The lock is
            # released with the transaction; the others then find the schema at head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: emit the SQL instead of running it."""
    context.configure(
        url=normalise_url(_database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    # Foreign keys off on SQLite while migrating: batch mode rebuilds a table by copying it
    # and dropping the original, and with enforcement on that DROP would cascade-delete (or
    # refuse because of) the rows that reference it. The statement timeout is off too, so
    # a long data migration is not cut short.
    engine = make_engine(_database_url(), sqlite_foreign_keys=False, statement_timeout_ms=None)
    try:
        # IMMEDIATE: take SQLite's write lock before Alembic reads the current revision,
        # so two processes migrating at once run one after the other.
        with engine.connect().execution_options(**WRITE_OPTIONS) as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
