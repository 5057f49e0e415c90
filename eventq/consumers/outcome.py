"""One outcome per record: what each fetched record ended as, and what follows from it.

Every record of a partition's slice ends as exactly one of

=================  ============================================================
``handled``        a handler succeeded → a ``handled`` row (none for a
                   transactional handler: it wrote its row itself)
``duplicate``      the group finished it before → nothing more
``skipped``        no handler and ``on_unknown_type=skip`` → a ``skipped`` row
``dead_lettered``  → a dead letter, then (if it has an event id) a row
``retry_handed_off`` republished to its next retry topic → that record
``None``           not finished (interrupted): fetched again later
=================  ============================================================

Rows, dead letters, hand-offs, the offset to commit, metrics and spans are all
derived from these outcomes (:class:`Slice`); no stage keeps a second account.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from opentelemetry import context as otel_context

from eventq.consumers import store
from eventq.consumers.app import Handler
from eventq.consumers.deadletter import DeadLetter, Failure
from eventq.consumers.retrytopics import RetryState, original_headers
from eventq.errors import EventqError
from eventq.schemas.envelope import Event

HANDLED = "handled"
DUPLICATE = "duplicate"
SKIPPED = "skipped"
DEAD_LETTERED = "dead_lettered"
HANDED_OFF = "retry_handed_off"

HandOff = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers


class Item:
    """One fetched record on its way through the stages, and its outcome once it has one."""

    __slots__ = (
        "record", "event", "invalid", "handler", "origin", "outcome", "attempts", "retries", "failure",
        "handoff", "claimed", "parent", "trace",
    )

    def __init__(self, record: Any, event: Event | None, invalid: EventqError | None, handler: Handler | None):
        self.record = record
        self.event = event
        self.invalid = invalid  # why it is not a valid event (decode or schema), if it is not
        self.handler = handler
        self.origin: RetryState | None = None  # where a record of a retry topic first came from
        self.outcome: str | None = None
        self.attempts = 0  # handler attempts made
        self.retries = 0  # of them, failed attempts that were retried
        self.failure: Failure | None = None  # why it was dead-lettered
        self.handoff: HandOff | None = None  # its retry-topic record
        self.claimed = False  # a transactional handler wrote its row in its own transaction
        self.parent: otel_context.Context | None = None  # the event's creation context (tracing on)
        self.trace: Any = None  # owned by the instruments (the ``handle`` span)

    @property
    def position(self) -> tuple[str, int, int, int]:
        """(topic, partition, offset, timestamp) of the source record (the first one, for a retry)."""
        o = self.origin
        if o is not None:
            return o.topic, o.partition, o.offset, o.timestamp
        r = self.record
        return r.topic, r.partition, r.offset, r.timestamp

    def row(self) -> store.Processed | None:
        """The ``processed_events`` row this outcome asks for (None: none, or already written)."""
        event = self.event
        outcome = self.outcome
        if event is None or outcome is None or outcome in (DUPLICATE, HANDED_OFF) or self.claimed:
            return None
        topic, partition, offset, _ = self.position
        return store.Processed(event.id, topic, partition, offset, outcome, event.source)

    def letter(self, group: str) -> DeadLetter:
        """The dead letter of a ``dead_lettered`` item: the source record as it arrived."""
        assert self.failure is not None
        r = self.record
        topic, partition, offset, timestamp = self.position
        headers = list(r.headers or ())
        if self.origin is not None:
            headers = original_headers(headers)
        return DeadLetter(
            topic=topic, partition=partition, offset=offset, timestamp=timestamp, key=r.key, value=r.value,
            headers=headers, group=group, failure=self.failure,
        )


class Slice:
    """One partition's records of a fetched batch, in offset order; everything else is derived."""

    __slots__ = ("topic", "partition", "items", "trace", "started")

    def __init__(self, topic: str, partition: int, items: list[Item]) -> None:
        self.topic = topic
        self.partition = partition
        self.items = items
        self.trace: Any = None  # owned by the instruments (the ``process`` span)
        self.started = 0.0

    @property
    def first_offset(self) -> int:
        return int(self.items[0].record.offset)

    @property
    def next_offset(self) -> int:
        """Everything before it is finished: the offset to commit once rows and letters are written."""
        for item in self.items:
            if item.outcome is None:
                return int(item.record.offset)
        return int(self.items[-1].record.offset) + 1

    @property
    def complete(self) -> bool:
        return self.next_offset > int(self.items[-1].record.offset)

    @property
    def rows(self) -> list[store.Processed]:
        return [row for item in self.items if (row := item.row()) is not None]

    @property
    def lettered(self) -> list[Item]:
        return [item for item in self.items if item.outcome == DEAD_LETTERED]

    @property
    def handoffs(self) -> list[HandOff]:
        return [item.handoff for item in self.items if item.handoff is not None and item.outcome == HANDED_OFF]

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    @property
    def handled(self) -> int:
        return self.count(HANDLED)

    @property
    def duplicates(self) -> int:
        return self.count(DUPLICATE)

    @property
    def retries(self) -> int:
        return sum(item.retries for item in self.items)


class Interrupt:
    """Asks a running slice to stop between events (shutdown, partition revocation).

    The handler running at that moment finishes; a retry back-off is cut short and
    its event left unfinished (so it is delivered again).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True (at once) if interrupted meanwhile."""
        if delay > 0 and not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._event.wait()
        return self._event.is_set()
