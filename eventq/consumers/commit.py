"""Stage 7 of 7 — commit: commit each partition's offset once everything before it is finished.

One committer task commits the latest offered offset of every partition in one
``commit()`` call (at most one every :data:`COMMIT_SPACING_S`), and only offsets of
partitions still assigned. Broker outages are
waited out; a commit the group refuses (the partition moved) is dropped, since the
new owner resumes from the last commit and skips what was recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as ke

from eventq.consumers.health import Status
from eventq.consumers.instruments import Instruments

log = structlog.get_logger("eventq.consumer")

COMMIT_SPACING_S = 0.05  # between the background committer's commits (revocation and shutdown commit at once)


class Committer:
    """Commits the offsets slices offer; only offsets of partitions still assigned.

    Each commit is reported to the instruments with the tokens of the slices it
    covers (with tracing on: a ``commit`` span linked to their ``process`` spans).
    """

    def __init__(self, consumer: AIOKafkaConsumer, status: Status, instruments: Instruments | None = None) -> None:
        self._consumer = consumer
        self._status = status
        self._instruments = instruments or Instruments()
        self.committed: dict[TopicPartition, int] = {}  # the last offset committed, per partition
        self._pending: dict[TopicPartition, int] = {}
        self._spans: dict[TopicPartition, list[tuple[int, Any]]] = {}  # (offset offered, slice token)
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

    def offer(self, tp: TopicPartition, offset: int, token: Any = None) -> None:
        """Everything before ``offset`` in ``tp`` is finished: commit it soon (``token``: the slice's)."""
        self._pending[tp] = offset
        if token is not None:
            self._spans.setdefault(tp, []).append((offset, token))
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
            except Exception as exc:  # a failing before_commit crash point: this commit is skipped, later ones go on
                log.error("consumer.commit_skipped", error_type=type(exc).__name__, error=str(exc))
            # Offers made meanwhile go into the next commit: at most one commit per spacing, however
            # small the slices (at low rates a slice is one event, and a commit costs a round trip).
            await asyncio.sleep(COMMIT_SPACING_S)

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
                await self._instruments.before_commit({(tp.topic, tp.partition): o for tp, o in offsets.items()})
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
        linked = [token for tp, o in offsets.items() for offered, token in self._spans.get(tp, ()) if offered <= o]
        measuring = self._instruments.commit_started(offsets, linked) if linked else None
        try:
            await self._consumer.commit(offsets)
        except BaseException as exc:
            if measuring is not None:
                self._instruments.commit_finished(measuring, exc)
            raise
        if measuring is not None:
            self._instruments.commit_finished(measuring, None)
        self.committed.update(offsets)
        for tp, o in offsets.items():  # the slices this commit covered
            if tp in self._spans:
                self._spans[tp] = [(offered, token) for offered, token in self._spans[tp] if offered > o]

    def _settle(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if self._pending.get(tp) == offset:  # not superseded meanwhile
                del self._pending[tp]
