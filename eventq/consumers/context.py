"""What a handler gets besides its event(s).

``ctx.publish`` sends follow-up events: created inside a handler, an
:class:`~eventq.schemas.envelope.Event` already carries the handled event's
correlation id and, as causation id, the handled event's id (the daemon runs every
handler inside :func:`~eventq.schemas.correlation.caused_by`).

Inside a ``transactional=True`` handler, ``ctx.publish`` adds the follow-up to the
transactional outbox (:mod:`eventq.outbox`) in the handler's transaction instead: the
handler's writes, its ``processed_events`` row and its follow-ups commit together or
not at all, and the outbox relay publishes them once committed.

``ctx.db`` is a PostgreSQL connection: for a ``transactional=True`` handler it is
inside the transaction that also records the event, so its writes happen exactly
once; for other handlers it is the daemon's connection pool (``await
ctx.db.execute(...)``), and writes through it must be idempotent.
"""

from __future__ import annotations

from typing import Any

import structlog

from eventq.outbox.writer import Added, Outbox
from eventq.producers.producer import Producer, Published
from eventq.schemas.envelope import Event


class _Base:
    __slots__ = ("topic", "partition", "group", "handler", "attempt", "db", "_producer", "_log", "_outbox")

    def __init__(
        self, topic: str, partition: int, group: str, handler: str, attempt: int, db: Any, producer: Producer
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.group = group
        self.handler = handler
        self.attempt = attempt  # 1 on the first try
        self.db = db
        self._producer = producer
        self._log: Any = None
        self._outbox: Outbox | None = None

    async def publish(self, event: Event, *, topic: str | None = None) -> Published | Added:
        """Publish a follow-up event.

        In a plain or batch handler: sent now, returning once the broker acknowledged it
        (:class:`Published`); raises like :meth:`Producer.publish`. A handler that fails
        after publishing publishes again when retried; give follow-ups an id derived from
        the handled event (``Event(id=...)``) when consumers must see them only once.

        In a ``transactional=True`` handler: added to the outbox in the handler's
        transaction (:class:`~eventq.outbox.Added`), validated now (an invalid event
        raises here and rolls the transaction back); published by the outbox relay once
        the transaction commits, and never if it rolls back.
        """
        if self._outbox is not None:
            return await self._outbox.add(self.db, event, topic=topic)
        return await self._producer.publish(event, topic=topic)

    def _bind(self, **extra: Any) -> Any:
        return structlog.get_logger("eventq.handler").bind(
            topic=self.topic, partition=self.partition, consumer_group=self.group, handler=self.handler,
            attempt=self.attempt, **extra,
        )


class Context(_Base):
    """The context of one event: where it came from, a bound logger, a producer, a database."""

    __slots__ = ("event", "offset")

    def __init__(
        self,
        event: Event,
        offset: int,
        topic: str,
        partition: int,
        group: str,
        handler: str,
        attempt: int,
        db: Any,
        producer: Producer,
    ) -> None:
        # Flat on purpose: built once per event, it is on the consumer's hot path.
        self.event = event
        self.offset = offset
        self.topic = topic
        self.partition = partition
        self.group = group
        self.handler = handler
        self.attempt = attempt
        self.db = db
        self._producer = producer
        self._log = None
        self._outbox = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to the event (id, type, correlation id, topic, partition, offset)."""
        if self._log is None:
            self._log = self._bind(
                event_id=self.event.id, event_type=self.event.type, correlation_id=self.event.correlation_id,
                offset=self.offset,
            )
        return self._log


class BatchContext(_Base):
    """The context of a batch handler's call: its events share topic, partition and type set."""

    __slots__ = ("events",)

    def __init__(self, events: list[Event], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    @property
    def log(self) -> Any:
        """A structlog logger bound to the batch (topic, partition, size)."""
        if self._log is None:
            self._log = self._bind(batch_size=len(self.events))
        return self._log
