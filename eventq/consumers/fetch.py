"""Stage 1 of 7 — fetch: take records from the free partitions and hand them on.

A partition is *free* when its last slice's handlers are done and at most one slice
of it is still being recorded (:class:`Lanes`): fetching the next records overlaps
recording and committing the previous ones, and nothing waits for a batch to fill
(``getmany`` returns as soon as records arrive). A busy partition is not fetched; if
every partition stays busy for a second (retries, an outage) they are paused and
polled, so the group does not evict the member.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as ke

from eventq.consumers.commit import Committer
from eventq.consumers.outcome import Interrupt
from eventq.consumers.settings import ConsumerSettings
from eventq.errors import ConsumerError
from eventq.kafka import explain

log = structlog.get_logger("eventq.consumer")

_ALL_BUSY_WAIT_S = 1.0  # all partitions busy this long → pause them and poll, to stay in the group
_DEPTH = 2  # slices of one partition in flight at most: one being handled, one being recorded

# Refusals no retry can mend (a missing ACL): the daemon stops with the cause instead.
_REFUSED = (ke.GroupAuthorizationFailedError, ke.TopicAuthorizationFailedError, ke.ClusterAuthorizationFailedError)


class Lane:
    """One assigned partition's work in flight."""

    __slots__ = ("handling", "settling", "unsettled", "interrupt", "rewind")

    def __init__(self) -> None:
        self.handling: asyncio.Task[None] | None = None  # the slice whose handlers run
        self.settling: asyncio.Task[bool] | None = None  # the latest slice being recorded
        self.unsettled = 0  # slices dispatched whose rows are not written yet
        self.interrupt = Interrupt()
        self.rewind: int | None = None  # a slice failed: fetch again from here

    @property
    def free(self) -> bool:
        return self.handling is None and self.unsettled < _DEPTH and self.rewind is None

    def tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in (self.handling, self.settling) if t is not None and not t.done()]


class Lanes(dict[TopicPartition, Lane]):
    """The lanes of the partitions the daemon works on; ``changed`` is set when one frees up."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()
        self.paused: set[TopicPartition] = set()
        # Being revoked: not fetched or started (their records are the next owner's) until assigned again.
        self.closed: set[TopicPartition] = set()

    def lane(self, tp: TopicPartition) -> Lane:
        lane = self.get(tp)
        if lane is None:
            lane = self[tp] = Lane()
        return lane

    def working(self) -> bool:
        return any(lane.tasks() for lane in self.values())


class Fetcher:
    """The fetch loop of one daemon; ``dispatch`` receives each non-empty batch."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        settings: ConsumerSettings,
        lanes: Lanes,
        committer: Committer,
        dispatch: Callable[[Mapping[TopicPartition, list[Any]]], None],
        *,
        topics: tuple[str, ...],
        group: str,
        assigned: Callable[[int], None],
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.lanes = lanes
        self.committer = committer
        self.dispatch = dispatch
        self.topics = topics
        self.group = group
        self.assigned = assigned
        self._markers_checked = 0.0  # when commit_past_markers last looked

    async def run(self, stopping: asyncio.Event, *, until_idle: bool) -> None:
        stop = asyncio.create_task(stopping.wait())
        try:
            await self._fetch_until(stopping, stop, until_idle)
        finally:
            stop.cancel()

    async def _fetch_until(self, stopping: asyncio.Event, stop: asyncio.Task[Any], until_idle: bool) -> None:
        s = self.settings
        consumer = self.consumer
        lanes = self.lanes
        unassigned_since = asyncio.get_running_loop().time()
        while not stopping.is_set():
            assigned = consumer.assignment()
            self.assigned(len(assigned))
            free = [tp for tp in assigned if (tp not in lanes or lanes[tp].free) and tp not in lanes.closed]
            if assigned and not free:
                await self._all_busy()
                continue
            # Raced against stop(): during a rebalance getmany waits for the new
            # assignment, which must not hold up a shutdown; and against a lane freeing
            # up, whose partition is then fetched at once (cancelling getmany is safe:
            # records are only taken from aiokafka's buffer once it returns).
            lanes.changed.clear()
            fetch = asyncio.ensure_future(
                consumer.getmany(*free, timeout_ms=int(s.max_batch_timeout_s * 1000), max_records=s.max_batch_size)
            )
            changed = asyncio.ensure_future(lanes.changed.wait())
            await asyncio.wait({fetch, stop, changed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, ke.KafkaError):
                    await fetch
                if stop.done():
                    return
                continue
            try:
                records = fetch.result()
            except _REFUSED as exc:
                # aiokafka keeps retrying a refused group or topic for ever: stop with the cause.
                reason = explain(exc, s.kafka, topic=",".join(self.topics), operation="Read", group=self.group)
                raise ConsumerError(reason or f"{type(exc).__name__}: {exc}") from exc
            except ke.KafkaError as exc:
                log.warning("consumer.fetch_failed", error_type=type(exc).__name__, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if records and not stopping.is_set():
                # (Records fetched as the stop came are not started: nothing after
                # the last finished record is committed, so they are redelivered.)
                self.dispatch(records)
                continue
            if stopping.is_set():
                return
            await self.commit_past_markers()
            if until_idle and not lanes.working():
                now = asyncio.get_running_loop().time()
                if assigned:
                    unassigned_since = now
                    if await self._caught_up(assigned):
                        await self.commit_past_markers(force=True)
                        log.info("consumer.idle", group=self.group)
                        return
                elif now - unassigned_since > 2 * s.session_timeout_s:
                    log.info("consumer.idle_unassigned", group=self.group)
                    return

    async def _all_busy(self) -> None:
        lanes = self.lanes
        lanes.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ALL_BUSY_WAIT_S):
                await lanes.changed.wait()
                return
        # Still all busy (retries, an outage): pause the busy partitions so polling
        # returns nothing for them, and poll so the group does not evict us.
        consumer = self.consumer
        busy = [tp for tp, lane in lanes.items() if not lane.free and tp not in lanes.paused]
        busy = [tp for tp in busy if tp in consumer.assignment()]
        if busy:
            consumer.pause(*busy)
            lanes.paused.update(busy)
        if set(consumer.assignment()) <= lanes.paused:
            try:
                stray = await consumer.getmany(timeout_ms=0)
            except ke.KafkaError:
                return
            # A rebalance during that call may have assigned new (unpaused) partitions:
            # their records are ours now and must be processed, not dropped.
            if stray:
                self.dispatch(stray)

    def resume(self, tp: TopicPartition) -> None:
        """``tp``'s lane is free again: fetch it again if it was paused."""
        if tp in self.lanes.paused:
            self.lanes.paused.discard(tp)
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)

    async def commit_past_markers(self, *, force: bool = False) -> None:
        """Offer the position of idle partitions whose position passed what was committed.

        A partition's position moves past records the daemon never sees — the
        transaction markers ``eventq dlq replay`` leaves, aborted records — without a
        record to commit after them, so the committed offset would stay one below the
        log end for good (lag 1 in every lag-based tool). An idle partition (nothing in
        flight) has finished every record before its position, so committing the
        position commits nothing unfinished. Checked at most once a second.
        """
        now = time.monotonic()
        if now < self._markers_checked + 1.0 and not force:
            return
        self._markers_checked = now
        consumer, committer, lanes = self.consumer, self.committer, self.lanes
        for tp in consumer.assignment():
            if tp in lanes and (lanes[tp].tasks() or lanes[tp].unsettled):
                continue
            try:
                position = await consumer.position(tp)
                done = committer.committed.get(tp)
                if done is None:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        continue
                    done = committer.committed[tp] = committed
            except (ke.KafkaError, ke.IllegalStateError, AssertionError):  # revoked meanwhile
                continue
            lane = lanes.get(tp)
            if position > done and (lane is None or not (lane.tasks() or lane.unsettled)) and (
                tp in consumer.assignment()
            ):
                committer.offer(tp, position)

    async def _caught_up(self, assigned: set[TopicPartition]) -> bool:
        try:
            ends = await self.consumer.end_offsets(list(assigned))
            for tp in assigned:
                if await self.consumer.position(tp) < ends[tp]:
                    return False
        except (ke.KafkaError, ke.IllegalStateError):
            return False
        return True
