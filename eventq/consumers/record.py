"""Stage 6 of 7 — record: write the ``processed_events`` rows of finished events.

Rows of slices that finish in the same event-loop turn go to PostgreSQL in one
statement. An outage is waited out (see :mod:`eventq.consumers.health`) instead of
failing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from eventq.consumers import store
from eventq.consumers.health import Status, with_database

log = structlog.get_logger("eventq.consumer")


class Recorder:
    """Writes ``processed_events`` rows, several slices' rows per statement.

    :meth:`record` returns only once the rows are written: an outage is waited out; a
    statement that fails otherwise is split per slice and each part retried with
    back-off until it succeeds (logged), because the handlers already ran — rewinding
    would run them again and again.
    """

    _RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, pool: Any, group: str, status: Status) -> None:
        self._pool = pool
        self._group = group
        self._status = status
        self._pending: list[tuple[list[store.Processed], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, rows: list[store.Processed]) -> None:
        """Return once ``rows`` are written."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, waiter))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="eventq-recorder")
        await waiter

    async def stop(self) -> None:
        """Give up on rows not written yet (their slices are abandoned, uncommitted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _flush(self) -> None:
        while self._pending:
            batches, self._pending = self._pending, []
            rows = [row for part, _ in batches for row in part]
            try:
                await self._write(rows)
            except Exception:
                for part, _ in batches:
                    await self._write_until_written(part)
            for _, waiter in batches:
                if not waiter.done():
                    waiter.set_result(None)

    async def _write(self, rows: list[store.Processed]) -> None:
        await with_database(self._status, lambda: store.record(self._pool, self._group, rows))

    async def _write_until_written(self, rows: list[store.Processed]) -> None:
        failures = 0
        while True:
            try:
                await self._write(rows)
            except Exception as exc:
                if failures == 0:
                    log.error("consumer.record_failed", rows=len(rows), error_type=type(exc).__name__, error=str(exc))
                self._status.database_ok = False
                await asyncio.sleep(self._RETRY_DELAYS[min(failures, len(self._RETRY_DELAYS) - 1)])
                failures += 1
                continue
            if failures:
                log.info("consumer.record_recovered", rows=len(rows), after_attempts=failures)
                self._status.database_up()
            return
