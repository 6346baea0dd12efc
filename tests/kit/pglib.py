"""A throwaway PostgreSQL server for tests, and the pytest fixtures that share it.

`PostgresServer` runs initdb into a fresh temporary directory, starts the server with pg_ctl
on a free loopback port with its unix socket in that directory, and removes it all on stop.
Nothing touches the machine's own clusters (Debian's pg_ctlcluster, /var/lib/postgresql).

Use as a pytest plugin from a test module (one server for the whole session, however many
modules ask for it)::

    pytest_plugins = ["tests.kit.pglib"]

    @pytest.mark.peers
    def test_something(postgres_url: str) -> None: ...  # a fresh, empty database per test

Fixtures: `postgres_server` (session) and `postgres_url` (function: a new database, dropped
afterwards). Without the server binaries the fixtures skip, except under CI=true, where they
fail: CI must never pass by silently skipping the PostgreSQL tests.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
DEBIAN_PACKAGE = "postgresql"
SUPERUSER = "sipagent"

# Durability is pointless for a database deleted at the end of the run; turning it off
# makes initdb and every commit several times faster.
FAST_UNSAFE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def find_bindir() -> Path | None:
    """Where initdb/pg_ctl/postgres are: PATH, `pg_config --bindir`, or Debian's
    versioned /usr/lib/postgresql/N/bin (not on PATH after `apt-get install postgresql`)."""
    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        if all((bindir / name).exists() for name in SERVER_BINARIES):
            return bindir
    pg_config = shutil.which("pg_config")
    candidates: list[Path] = []
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in versioned),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,  # newest first
    )
    for bindir in candidates:
        if all((bindir / name).exists() for name in SERVER_BINARIES):
            return bindir
    return None


def missing_reason() -> str | None:
    if find_bindir() is None:
        return (
            f"PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) not found "
            f"(apt-get install {DEBIAN_PACKAGE})"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One private PostgreSQL cluster. `start()`, `create_database()`, `url()`, `stop()`."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError(missing_reason() or "PostgreSQL binaries not found")
        self.bindir = found
        self.root: Path | None = None
        self.port = 0
        self._run_as: str | None = None
        self._names = itertools.count(1)

    # The directory comes from tempfile (not pytest's tmp_path): as root the server must run
    # as another user (initdb refuses root), and pytest's per-user base dir is private (0700).
    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def _cmd(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._run_as,
            check=False,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            cwd=self.root,
        )

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            self._run_as = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="sipagent-pg-"))
        self.socket_dir.mkdir()
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        init = self._cmd(
            self.bindir / "initdb",
            "-D",
            self.datadir,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if init.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        settings = " ".join(f"-c {k}={v}" for k, v in FAST_UNSAFE_SETTINGS.items())
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 {settings}"
            )
            started = self._cmd(
                self.bindir / "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                self.datadir,
                "-l",
                self.log_file,
                "-o",
                options,
            )
            if started.returncode == 0:
                return self
            last_error = f"{started.stdout}\n{started.stderr}\n{self._log_tail()}"
        self._cleanup()
        raise RuntimeError(f"pg_ctl start failed:\n{last_error}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        return ""

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            self._cmd(self.bindir / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.datadir)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL over the unix socket (no TCP port contention, no passwords)."""
        return (
            f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"
        )

    def _admin(self, sql: str) -> None:
        import psycopg  # late: only PostgreSQL tests need the driver

        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; returns its name."""
        name = name or f"test_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # WITH (FORCE) (PostgreSQL 13+) ends sessions a test left open (e.g. a pool it
        # did not dispose), which would otherwise make DROP fail.
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# pytest plugin


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session (skipped, or failed under CI=true,
    when the server binaries are missing)."""
    problem = missing_reason()
    if problem is not None:
        if in_ci():
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh empty database on the session's server, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
