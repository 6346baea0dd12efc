"""Engines and migrations: `make_engine(url)`, `upgrade(url)`, `downgrade(url, rev)`.

The application uses the synchronous engine from worker threads (`asyncio.to_thread`), so a
slow disk or a lock wait never stalls the event loop that paces RTP, and one driver per
database is enough (`sqlite3` from the standard library, `psycopg` for PostgreSQL).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

DATABASE_URL_ENV = ("SIPAGENT_DATABASE_URL", "DATABASE_URL")
MIGRATIONS_DIR_ENV = "SIPAGENT_MIGRATIONS_DIR"

# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock at
# BEGIN. A deferred transaction that reads and then writes can fail with SQLITE_BUSY without
# waiting (in WAL mode, when another writer committed since its read snapshot began), which
# busy_timeout cannot help with; taking the lock up front makes writers queue instead.
SQLITE_BEGIN_OPTION = "sipagent_sqlite_begin"
WRITE_OPTIONS: dict[str, Any] = {SQLITE_BEGIN_OPTION: "IMMEDIATE"}


def configured_database_url() -> str:
    """The URL the application is configured with: `AgentSettings.database_url`
    (SIPAGENT_DATABASE_URL / DATABASE_URL, else SQLite in the user data directory)."""
    from sipagent.config import AgentSettings  # late: keep this module importable alone

    return str(AgentSettings().database_url)


def shown_url(url: str | URL) -> str:
    """The URL as it may be printed: password hidden."""
    try:
        return normalise_url(url).render_as_string(hide_password=True)
    except Exception:  # unparseable: show it without anything that looks like credentials
        return re.sub(r"//[^/@]*@", "//***@", str(url))


def normalise_url(url: str | URL) -> URL:
    """Pin PostgreSQL URLs to psycopg 3, the driver the project depends on: a bare
    `postgresql://` means psycopg2 under SQLAlchemy 2.0, and `postgres://` (as some hosting
    platforms print it) is not accepted by SQLAlchemy at all."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(url.query.get("mode", ""))


def make_engine(
    url: str | URL,
    *,
    sqlite_busy_timeout_ms: int = 10_000,
    sqlite_foreign_keys: bool = True,
    pool_size: int = 5,
    max_overflow: int = 10,
    statement_timeout_ms: int | None = 15_000,
    echo: bool = False,
) -> Engine:
    """A synchronous engine tuned per database.

    SQLite: WAL (readers never block the writer, and vice versa), foreign keys enforced
    (SQLite ignores them by default), a busy timeout so concurrent writers wait rather than
    fail, and BEGIN emitted by SQLAlchemy so transactions (DDL included) really are
    transactions. `sqlite:///:memory:` shares one connection (StaticPool): for tests only.

    PostgreSQL: a bounded pool with pre-ping (a connection dropped by a restart or a
    firewall is replaced instead of failing the caller's booking), recycling, a connect
    timeout and a statement timeout so a stuck lock surfaces as an error the receptionist
    can apologise for instead of silence on the line.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(parsed, sqlite_busy_timeout_ms, sqlite_foreign_keys, echo)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 10, "application_name": "sipagent"}
        if statement_timeout_ms is not None:
            connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=30,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        echo=echo,
    )


def _make_sqlite_engine(url: URL, busy_timeout_ms: int, foreign_keys: bool, echo: bool) -> Engine:
    memory = _is_memory_sqlite(url)
    # The pool hands each connection to one thread at a time, so sqlite3's same-thread
    # check would only get in the way of asyncio.to_thread's worker threads.
    connect_args: dict[str, Any] = {
        "check_same_thread": False,
        "timeout": busy_timeout_ms / 1000,
    }
    if memory:
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool, echo=echo)
    else:
        engine = create_engine(url, connect_args=connect_args, echo=echo)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy (the "begin" hook below) emit BEGIN: the sqlite3 module's legacy
        # mode skips it before SELECT and DDL, which breaks isolation and transactional DDL.
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first, so switching to WAL waits for a concurrent opener.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable across application crashes in WAL mode; only a power
                # loss can drop the last commits, and it saves an fsync per booking.
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = str(connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED"))
        if mode.upper() not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"bad {SQLITE_BEGIN_OPTION} {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode.upper()}")

    return engine


# ---------------------------------------------------------------------------------------------
# migrations


def migrations_dir() -> Path:
    """The Alembic environment shipped inside the package (`sipagent/migrations`, so a wheel
    has it too), or SIPAGENT_MIGRATIONS_DIR."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(
            f"no Alembic environment at {path}; set {MIGRATIONS_DIR_ENV} to the migrations dir"
        )
    return path


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config for `url` (default: the configured URL) with no ini file needed.

    The URL travels in `config.attributes`, not `sqlalchemy.url`: the ini option goes
    through ConfigParser interpolation, which would mangle passwords containing '%'."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = normalise_url(url or configured_database_url())
    return config


# Alembic keeps the running migration's context in module globals (`alembic.context`, `op`),
# so two migrations in one process at once would trample each other: run them one by one.
_ALEMBIC_LOCK = threading.Lock()


def upgrade(
    url: str | URL | None = None, revision: str = "head", *, engine: Engine | None = None
) -> None:
    """Migrate the database to `revision` (used by `sipagent db upgrade` and agent start).

    Safe to run from several agent processes at once: the migration transaction takes a
    PostgreSQL advisory lock / SQLite's write lock before reading the current revision.
    `engine` migrates through an existing engine instead of a URL: the only way to reach a
    `sqlite:///:memory:` database, which exists inside its engine alone."""
    if engine is not None:
        _migrate_with_engine(engine, "upgrade", revision)
        return
    config = alembic_config(url)
    with _ALEMBIC_LOCK:
        for attempt in range(5):
            try:
                command.upgrade(config, revision)
                return
            except OperationalError as error:
                # Several processes creating one SQLite file: switching it to WAL needs a
                # moment of exclusive access that busy_timeout does not always wait for.
                if "locked" not in str(error) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))


def downgrade(url: str | URL | None, revision: str, *, engine: Engine | None = None) -> None:
    """Migrate the database down to `revision` ("base" drops every table)."""
    if engine is not None:
        _migrate_with_engine(engine, "downgrade", revision)
        return
    config = alembic_config(url)
    with _ALEMBIC_LOCK:
        command.downgrade(config, revision)


def _migrate_with_engine(engine: Engine, direction: str, revision: str) -> None:
    config = alembic_config(engine.url)
    with _ALEMBIC_LOCK, engine.connect().execution_options(**WRITE_OPTIONS) as connection:
        config.attributes["connection"] = connection
        # Foreign keys off while migrating, as env.py does for its own engines (batch mode's
        # table rebuilds must not cascade). The pragma is a no-op inside a transaction, so it
        # goes to the driver connection directly, before SQLAlchemy begins one.
        raw: Any = (
            connection.connection.dbapi_connection if engine.dialect.name == "sqlite" else None
        )
        enforced = raw.execute("PRAGMA foreign_keys").fetchone()[0] if raw is not None else 0
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            getattr(command, direction)(config, revision)
            # env.py ran the migration in its own transaction on this connection; leave
            # nothing open when the connection goes back to the pool.
            if connection.in_transaction():
                connection.commit()
        finally:
            if raw is not None:
                raw.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")


def current_revision(url: str | URL | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = make_engine(url or configured_database_url())
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# opening the configured database, with one-line reasons for people

FIX_URL = (
    "set SIPAGENT_DATABASE_URL (or --database-url) to sqlite:///path/file.db or "
    "postgresql+psycopg://user:pw@host/db"
)


class DatabaseUnavailableError(Exception):
    """The configured database cannot be used; the message names it and the fix."""


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def prepare_database(url: str, *, create: bool) -> str:
    """Check that `url` can be used, and migrate it when `create`; the revision it is at.

    Read-only commands pass create=False: a database that does not exist yet is reported,
    never created (an empty one in the wrong folder would hide where the real one is)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = shown_url(url)
    try:
        parsed = normalise_url(url)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise DatabaseUnavailableError(
                f"database {shown}: {backend} is not supported; {FIX_URL}"
            )
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise DatabaseUnavailableError(
            f"{shown!r} is not a database URL ({_first_line(error)}); {FIX_URL}"
        ) from None
    if backend == "sqlite" and not _is_memory_sqlite(parsed):
        path = Path(parsed.database or "").expanduser()
        if not create and not path.exists():
            raise DatabaseUnavailableError(
                f"no database at {path} yet (nothing recorded there): run `sipagent serve` or "
                "`sipagent db upgrade` first, or point SIPAGENT_DATABASE_URL at your database"
            )
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseUnavailableError(
                    f"cannot create {path.parent} for database {shown}: "
                    f"{error.strerror or error}; {FIX_URL}"
                ) from None
            writable = path if path.exists() else path.parent
            if not os.access(writable, os.W_OK):
                raise DatabaseUnavailableError(
                    f"database {path} is not writable ({writable} is read-only for this user); "
                    f"fix its permissions or {FIX_URL}"
                )
    try:
        if create:
            upgrade(url)
        revision = current_revision(url)
    except (SQLAlchemyError, OSError) as error:
        fix = (
            "start PostgreSQL or check host, port, user and password in the URL"
            if backend == "postgresql"
            else FIX_URL
        )
        raise DatabaseUnavailableError(
            f"cannot use database {shown}: {_first_line(error)}; {fix}"
        ) from None
    if revision is None:
        raise DatabaseUnavailableError(
            f"database {shown} has no sipagent tables yet: run `sipagent db upgrade`"
        )
    return revision
