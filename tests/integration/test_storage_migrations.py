"""The Alembic environment on SQLite and on a real PostgreSQL (tests/kit/pglib.py): round trip,
schema == models, concurrent upgrades from several agents, the `alembic` command line."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from sipagent.storage import current_revision, downgrade, make_engine, upgrade
from sipagent.storage.models import Base

pytest_plugins = ["tests.kit.pglib"]

REPO = Path(__file__).resolve().parents[2]
TABLES = {"calls", "turns", "appointments", "appointment_slots"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)])
def fresh_url(request, tmp_path):
    """An empty database (never migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'agent.db'}"
    return request.getfixturevalue("postgres_url")


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(fresh_url):
    assert current_revision(fresh_url) is None
    upgrade(fresh_url)
    assert current_revision(fresh_url) == "0002"
    assert tables(fresh_url) == TABLES | {"alembic_version"}

    engine = make_engine(fresh_url)
    with engine.begin() as connection:  # data in every table, so the drops meet real rows
        connection.execute(
            text(
                "INSERT INTO calls (sip_call_id, from_uri, to_uri, started_at, "
                "end_reason, offline_mode) VALUES ('c', '', '', "
                "CURRENT_TIMESTAMP, '', false)"
            )
        )
    engine.dispose()

    downgrade(fresh_url, "base")
    assert current_revision(fresh_url) is None
    assert tables(fresh_url) <= {"alembic_version"}

    upgrade(fresh_url)
    assert current_revision(fresh_url) == "0002"
    assert tables(fresh_url) == TABLES | {"alembic_version"}
    upgrade(fresh_url)  # at head: a no-op
    assert schema_drift(fresh_url) == []


def test_migrated_schema_matches_the_models(fresh_url):
    """The hand-written revision and the models describe the same schema (types,
    nullability, indexes, unique constraints, foreign keys)."""
    upgrade(fresh_url)
    assert schema_drift(fresh_url) == []
    engine = make_engine(fresh_url)
    try:
        inspector = inspect(engine)
        uniques = {u["name"] for u in inspector.get_unique_constraints("appointment_slots")}
        assert "uq_appointment_slots_slot_start" in uniques
        checks = {c["name"] for c in inspector.get_check_constraints("appointments")}
        assert {"ck_appointments_reason", "ck_appointments_status"} <= checks
    finally:
        engine.dispose()


def test_calls_recorded_before_the_worker_column_keep_their_rows(fresh_url):
    upgrade(fresh_url, "0001")
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO calls (sip_call_id, from_uri, to_uri, started_at, "
                    "end_reason, offline_mode) VALUES ('old', 'sip:a@b', '', "
                    "CURRENT_TIMESTAMP, '', false)"
                )
            )
        upgrade(fresh_url)
        with engine.connect() as connection:
            row = connection.execute(text("SELECT from_uri, worker FROM calls")).one()
        assert tuple(row) == ("sip:a@b", None)
        downgrade(fresh_url, "0001")  # and back: the column goes, the row stays
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM calls")).scalar_one() == 1
            assert "worker" not in {c["name"] for c in inspect(connection).get_columns("calls")}
    finally:
        engine.dispose()


MIGRATE = (
    "import sys, time; from sipagent.storage import upgrade; "
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); upgrade(sys.argv[1])"
)


def test_agents_starting_together_migrate_once(fresh_url):
    """Four agent processes run `upgrade()` at the same instant on an empty database."""
    import time

    go_at = time.time() + 3.0
    agents = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, fresh_url, str(go_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
    assert current_revision(fresh_url) == "0002"
    assert schema_drift(fresh_url) == []


def test_threads_of_one_process_may_call_upgrade_together(fresh_url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def agent() -> None:
        barrier.wait()
        try:
            upgrade(fresh_url)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=agent) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and current_revision(fresh_url) == "0002"


def _alembic(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_alembic_command_line_takes_the_url_from_the_settings(tmp_path):
    env = {**os.environ, "SIPAGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    env.pop("DATABASE_URL", None)
    done = _alembic("upgrade", "head", env=env)
    assert done.returncode == 0, done.stderr
    assert current_revision(env["SIPAGENT_DATABASE_URL"]) == "0002"
    shown = _alembic("current", env=env)
    assert "0002 (head)" in shown.stdout, shown.stderr
    # -x url=... wins for one-off runs
    other = f"sqlite:///{tmp_path / 'x.db'}"
    assert _alembic("-x", f"url={other}", "upgrade", "head", env=env).returncode == 0
    assert current_revision(other) == "0002"


def test_offline_sql_for_postgresql_needs_no_server():
    env = {**os.environ}
    done = _alembic("-x", "url=postgresql://nobody@nowhere/db", "upgrade", "head", "--sql", env=env)
    assert done.returncode == 0, done.stderr
    sql = done.stdout
    assert "CREATE TABLE appointment_slots" in sql
    assert "CONSTRAINT uq_appointment_slots_slot_start UNIQUE (slot_start)" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql
