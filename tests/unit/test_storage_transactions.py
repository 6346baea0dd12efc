"""run_with_retries: which database errors re-run the whole transaction, and how often."""

import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from sipagent.storage.transactions import RETRY_ATTEMPTS, run_with_retries


class Flaky:
    """A transaction that fails with `error` on its first `failures` runs."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.runs = 0

    def __call__(self) -> str:
        self.runs += 1
        if self.runs <= self.failures:
            raise OperationalError("INSERT ...", {}, self.error)
        return "committed"


def test_a_locked_sqlite_database_is_retried_until_the_transaction_commits():
    operation = Flaky(2, sqlite3.OperationalError("database is locked"))
    assert run_with_retries(operation) == "committed"
    assert operation.runs == 3


def test_a_postgres_deadlock_is_retried():
    deadlock = Exception("deadlock detected")
    deadlock.sqlstate = "40P01"  # type: ignore[attr-defined]
    operation = Flaky(1, deadlock)
    assert run_with_retries(operation) == "committed"
    assert operation.runs == 2


def test_other_operational_errors_are_raised_at_once():
    operation = Flaky(1, sqlite3.OperationalError("no such table: appointments"))
    with pytest.raises(OperationalError, match="no such table"):
        run_with_retries(operation)
    assert operation.runs == 1


def test_a_transient_error_that_persists_is_raised_after_the_last_attempt():
    operation = Flaky(RETRY_ATTEMPTS, sqlite3.OperationalError("database is busy"))
    with pytest.raises(OperationalError, match="database is busy"):
        run_with_retries(operation)
    assert operation.runs == RETRY_ATTEMPTS
