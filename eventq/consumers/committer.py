"""The last two steps of a slice: write its rows, then commit its offset.

Both coalesce: rows of slices that finish in the same event-loop turn go to
PostgreSQL in one statement, and one committer task commits the latest offset of
every partition in one ``commit()`` call. Both wait out outages (see
:mod:`eventq.consumers.health`) instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as ke
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from eventq.consumers import store
from eventq.consumers.health import Status, with_database
from eventq.consumers.hooks import Hooks
from eventq.telemetry.tracing import Tracing

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


class Committer:
    """Commits the offsets slices offer; only offsets of partitions still assigned.

    With tracing on, each commit is a ``commit`` span linked to the ``process`` spans
    of the slices whose offsets it commits.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, hooks: Hooks, status: Status, *, tracing: Tracing | None = None
    ) -> None:
        self._consumer = consumer
        self._hooks = hooks
        self._status = status
        self._tracing = tracing or Tracing()
        self.committed: dict[TopicPartition, int] = {}  # the last offset committed, per partition
        self._pending: dict[TopicPartition, int] = {}
        self._spans: dict[TopicPartition, list[tuple[int, SpanContext]]] = {}  # (offset offered, slice span)
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="eventq-committer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def offer(self, tp: TopicPartition, offset: int, span: SpanContext | None = None) -> None:
        """Everything before ``offset`` in ``tp`` is finished: commit it soon (``span``: the slice's)."""
        self._pending[tp] = offset
        if span is not None:
            self._spans.setdefault(tp, []).append((offset, span))
        self._wanted.set()

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop pending offsets of partitions that are no longer ours."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._spans.pop(tp, None)
            self.committed.pop(tp, None)

    async def _loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.commit_now()
            except Exception as exc:  # a failing before_commit hook: this commit is skipped, later ones go on
                log.error("consumer.commit_skipped", error_type=type(exc).__name__, error=str(exc))

    async def commit_now(self, only: set[TopicPartition] | None = None) -> None:
        """Commit pending offsets (of ``only``, if given); waits out broker outages."""
        async with self._lock:
            while True:
                assigned = self._consumer.assignment()
                offsets = {
                    tp: offset for tp, offset in self._pending.items()
                    if tp in assigned and (only is None or tp in only)
                }
                if not offsets:
                    return
                await self._hooks.before_commit({(tp.topic, tp.partition): o for tp, o in offsets.items()})
                try:
                    await self._commit(offsets)
                except (ke.CommitFailedError, ke.IllegalStateError, ke.RebalanceInProgressError) as exc:
                    # Partitions moved to another member, which resumes from the last
                    # committed offset and skips what was recorded.
                    log.warning("consumer.commit_rejected", error_type=type(exc).__name__, error=str(exc))
                    self._settle(offsets)
                    return
                except ke.KafkaError as exc:
                    await self._status.broker_down(exc, "commit")
                    continue
                self._status.broker_up()
                self._settle(offsets)
                log.debug("consumer.committed", offsets={f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})
                return

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        linked = [sc for tp, o in offsets.items() for offered, sc in self._spans.get(tp, ()) if offered <= o]
        if not linked or not self._tracing.enabled:
            await self._consumer.commit(offsets)
        else:
            with trace.use_span(self._tracing.commit(linked, len(offsets)), end_on_exit=True):
                await self._consumer.commit(offsets)
        self.committed.update(offsets)
        for tp, o in offsets.items():  # the slices this commit covered
            if tp in self._spans:
                self._spans[tp] = [(offered, sc) for offered, sc in self._spans[tp] if offered > o]

    def _settle(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if self._pending.get(tp) == offset:  # not superseded meanwhile
                del self._pending[tp]
