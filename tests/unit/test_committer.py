"""Writing rows after handlers ran: failures are retried in place, never turned into re-runs."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from eventq.consumers.committer import Recorder
from eventq.consumers.health import Status
from eventq.consumers.store import Processed


class FlakyPool:
    """A pool whose INSERTs fail ``failures`` times with a non-outage error, then succeed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.statements: list[tuple[Any, ...]] = []

    async def execute(self, query: str, *args: Any) -> str:
        if self.failures:
            self.failures -= 1
            raise asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
        self.statements.append(args)
        return "INSERT 0 1"

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return []


async def test_a_failing_insert_is_retried_until_written_and_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three failed INSERTs (a read-only failover) delay record() but end in the rows written; one error line."""
    monkeypatch.setattr(Recorder, "_RETRY_DELAYS", (0.0,))
    pool = FlakyPool(failures=3)
    recorder = Recorder(pool, "billing", Status())
    rows = [Processed("01a22466-9070-7613-a3ca-3f1f10abf22c", "orders", 0, 7)]

    with capture_logs() as logs:
        await recorder.record(rows)

    assert len(pool.statements) == 1 and "01a22466-9070-7613-a3ca-3f1f10abf22c" in pool.statements[0][1]
    assert [entry["event"] for entry in logs].count("consumer.record_failed") == 1
    assert "consumer.record_recovered" in [entry["event"] for entry in logs]
