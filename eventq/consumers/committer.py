"""The last two steps of a slice: write its rows, then commit its offset.

Both coalesce: rows of slices that finish in the same event-loop turn go to
PostgreSQL in one statement, and one committer task commits the latest offset of
every partition in one ``commit()`` call. Both wait out outages (see
:mod:`eventq.consumers.health`) instead of failing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as ke

from eventq.consumers import store
from eventq.consumers.health import Status, with_database
from eventq.consumers.hooks import Hooks

log = structlog.get_logger("eventq.consumer")


class Recorder:
    """Writes ``processed_events`` rows, several slices' rows per statement."""

    def __init__(self, pool: Any, group: str, status: Status) -> None:
        self._pool = pool
        self._group = group
        self._status = status
        self._rows: list[store.Processed] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, rows: list[store.Processed]) -> None:
        """Return once ``rows`` are written (raises if the statement fails other than by an outage)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.extend(rows)
        self._waiters.append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="eventq-recorder")
        await waiter

    async def _flush(self) -> None:
        while self._waiters:
            rows, waiters = self._rows, self._waiters
            self._rows, self._waiters = [], []
            try:
                await with_database(self._status, lambda: store.record(self._pool, self._group, rows))  # noqa: B023
            except Exception as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class Committer:
    """Commits the offsets slices offer; only offsets of partitions still assigned."""

    def __init__(self, consumer: AIOKafkaConsumer, hooks: Hooks, status: Status) -> None:
        self._consumer = consumer
        self._hooks = hooks
        self._status = status
        self._pending: dict[TopicPartition, int] = {}
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

    def offer(self, tp: TopicPartition, offset: int) -> None:
        """Everything before ``offset`` in ``tp`` is finished: commit it soon."""
        self._pending[tp] = offset
        self._wanted.set()

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop pending offsets of partitions that are no longer ours."""
        for tp in partitions:
            self._pending.pop(tp, None)

    async def _loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.commit_now()

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
                    await self._consumer.commit(offsets)
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

    def _settle(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if self._pending.get(tp) == offset:  # not superseded meanwhile
                del self._pending[tp]
