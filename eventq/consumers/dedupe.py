"""Stage 3 of 7 — dedupe: events the group already finished skip their handler.

One query per fetched batch (:func:`eventq.consumers.store.finished`) finds the
events whose ``processed_events`` row exists. Rows of earlier slices that are
handled but not written yet (the record stage runs behind the next slice's handlers)
are known to :class:`InFlight`, so a pipelined partition never runs a handler twice
for an event it already ran. Within a slice, a second record of one event is a
duplicate of the first.

A replayed dead letter (``eventq dlq replay``) whose row says ``dead_lettered`` is not
a duplicate: replaying it is asking for it to run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

from eventq.consumers import store
from eventq.consumers.outcome import DEAD_LETTERED, DUPLICATE, Item
from eventq.wire import REPLAY_COUNT


def is_replayed(record: object) -> bool:
    """True if the record was republished from a dead-letter topic (``eventq dlq replay``)."""
    return any(name == REPLAY_COUNT for name, _ in getattr(record, "headers", None) or ())


class InFlight:
    """Events handled (or dead-lettered) whose rows are not written yet, with their outcome."""

    __slots__ = ("_outcomes",)

    def __init__(self) -> None:
        self._outcomes: dict[store.Identity, str] = {}

    def add(self, rows: Iterable[store.Processed]) -> None:
        for row in rows:
            self._outcomes[(row.event_id, row.source)] = row.outcome

    def written(self, rows: Iterable[store.Processed]) -> None:
        for row in rows:
            self._outcomes.pop((row.event_id, row.source), None)

    def snapshot(self, identities: Iterable[store.Identity]) -> dict[store.Identity, str]:
        """The outcomes of ``identities`` not written yet, as of now (taken when the batch's query is sent:
        a row written after that is either in the query's answer or in this snapshot)."""
        if not self._outcomes:
            return {}
        get = self._outcomes.get
        return {identity: outcome for identity in identities if (outcome := get(identity)) is not None}


class Lookups:
    """The batches' dedupe queries, one in flight at a time: lookups asked meanwhile share the next query.

    At high rates one fetched batch is one query anyway; at low rates, where every fetch
    holds an event or two, this keeps the queries per second bounded by their round trip
    instead of by the event rate. Each caller gets the rows of the query its ids were in
    (a superset of its own: lookups are by identity).
    """

    def __init__(self, query: Callable[[list[store.Identity]], Awaitable[dict[store.Identity, str]]]) -> None:
        self._query = query
        self._waiting: list[tuple[list[store.Identity], asyncio.Future[dict[store.Identity, str]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def finished(self, ids: list[store.Identity]) -> dict[store.Identity, str]:
        if not ids:
            return {}
        waiter: asyncio.Future[dict[store.Identity, str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((ids, waiter))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="eventq-dedupe")
        return await waiter

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                found = await self._query([identity for ids, _ in batch for identity in ids])
            except BaseException as exc:
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(found)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:  # (a query's own errors went to its waiters)
                pass


def identities(items: Iterable[Item]) -> list[store.Identity]:
    return [(item.event.id, item.event.source) for item in items if item.event is not None]


def mark_duplicates(
    items: list[Item], seen: Mapping[store.Identity, str], unwritten: Mapping[store.Identity, str] | None = None,
) -> None:
    """Give the outcome ``duplicate`` to every item the group finished or the slice holds twice.

    ``seen``: the rows found; ``unwritten``: the :meth:`InFlight.snapshot` taken with the query.
    """
    in_slice: set[store.Identity] = set()
    pending = unwritten.get if unwritten else None
    for item in items:
        event = item.event
        if event is None:
            continue
        identity = (event.id, event.source)
        if identity in in_slice:
            item.outcome = DUPLICATE
            continue
        in_slice.add(identity)
        outcome = seen.get(identity)
        if outcome is None and pending is not None:
            outcome = pending(identity)
        if outcome is not None and not (outcome == DEAD_LETTERED and is_replayed(item.record)):
            item.outcome = DUPLICATE
