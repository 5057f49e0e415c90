"""Adding events to the outbox inside the caller's own transaction.

Guarantees:

- An event added by :meth:`Outbox.add` is published by a relay if and only if the
  transaction it was added in commits (at least once: a relay that crashes after the
  broker acknowledged it and before removing the row publishes it again, with the
  same event id, which consumers drop).
- Nothing invalid reaches the table: every event is validated against its type's JSON
  Schema and encoded (size limit included) with the same rules as
  :meth:`~eventq.producers.Producer.publish`, when it is added. An invalid event
  raises :class:`~eventq.errors.EventError` in the caller, whose transaction then
  fails, never in the relay.
- Events of one partition key are published in the order their transactions
  committed, because adding one takes the key's lock until the transaction ends (see
  :mod:`eventq.outbox.rows`): a second transaction adding an event of the same key
  waits there for the first to commit or roll back.

With tracing on, each event gets a ``create {topic}`` span (a child of the active
span), whose context is stored with the row and sent with the record: the consumer's
``handle`` span continues that trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from eventq.errors import ConfigError, EventError
from eventq.outbox import rows as sql
from eventq.outbox.rows import OutboxRow, check_topic, to_row
from eventq.producers.settings import ProducerSettings
from eventq.schemas.envelope import Event, encode_parts
from eventq.schemas.registry import SchemaRegistry
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr


class Added(NamedTuple):
    """An event now in the outbox: it is published once its transaction commits."""

    event_id: str
    topic: str


class Outbox:
    """Validates and encodes events into outbox rows; adds them with the caller's connection.

    Built once per service (it loads the schemas, like a :class:`~eventq.producers.Producer`,
    from ``settings.schemas``); it holds no connection. ``settings`` defaults to
    :meth:`ProducerSettings.from_env`: its ``default_topic``, ``schemas`` and
    ``max_event_bytes`` apply.
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        registry: SchemaRegistry | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ProducerSettings.from_env()
        self.registry = registry if registry is not None else SchemaRegistry.load(self.settings.schemas)
        self._tracing = tr.Tracing((telemetry or Telemetry()).tracer_provider)

    def row(self, event: Event, *, topic: str | None = None) -> OutboxRow:
        """The validated, encoded row of ``event``; ``row(...).params()`` are :data:`~eventq.outbox.rows.INSERT_SQL`'s.

        This is the whole of adding an event for a synchronous driver (psycopg, SQLAlchemy):
        execute the statement with these parameters inside the transaction.
        """
        return self.rows([event], topic=topic)[0]

    def rows(self, events: Iterable[Event], *, topic: str | None = None) -> list[OutboxRow]:
        """The rows of ``events`` bound for one topic; the first invalid event raises (none is returned)."""
        name = self._topic(topic)
        validate = self.registry.validate
        max_bytes = self.settings.max_event_bytes
        tracing = self._tracing.enabled
        shared = None if tracing else tr.trace_headers()
        out: list[OutboxRow] = []
        for index, event in enumerate(events):
            span = self._tracing.create(name, event) if tracing else None
            try:
                validate(event.type, event.data)
                headers = tr.trace_headers(span) if span is not None else shared
                out.append(to_row(name, encode_parts(event, max_event_bytes=max_bytes, trace_headers=headers or ()),
                                  event.type))
            except EventError as exc:
                exc.add_note(f"outbox: events[{index}] (type {event.type!r}, id {event.id}); nothing was added")
                if span is not None:
                    tr.fail(span, exc)
                raise
            finally:
                if span is not None:
                    span.end()
        return out

    async def add(self, conn: Any, event: Event, *, topic: str | None = None) -> Added:
        """Add ``event`` in the transaction open on ``conn`` (an asyncpg connection).

        Raises EventError (invalid event; nothing added) or ValueError when ``conn`` is not
        in a transaction: an event added outside one would be committed on its own, which
        is the dual write the outbox exists to prevent.
        """
        row = self.row(event, topic=topic)
        _require_transaction(conn)
        await conn.execute(sql.ASYNCPG_INSERT_ONE, *row)
        return Added(row.event_id, row.topic)

    async def add_many(self, conn: Any, events: Iterable[Event], *, topic: str | None = None) -> list[Added]:
        """Add several events bound for one topic in one statement, in the order given; all or none."""
        rows = self.rows(events, topic=topic)
        _require_transaction(conn)
        if not rows:
            return []
        if len(rows) == 1:
            await conn.execute(sql.ASYNCPG_INSERT_ONE, *rows[0])
        else:
            await conn.execute(sql.ASYNCPG_INSERT_MANY, *sql.many_args(rows[0].topic, rows))
        return [Added(r.event_id, r.topic) for r in rows]

    def _topic(self, topic: str | None) -> str:
        name = topic or self.settings.default_topic
        if not name:
            raise ConfigError("no topic given; pass topic=... or set default_topic (EVENTQ_TOPIC)")
        return check_topic(name)


def _require_transaction(conn: Any) -> None:
    in_transaction = getattr(conn, "is_in_transaction", None)
    if in_transaction is None or not in_transaction():
        raise ValueError(
            "the outbox adds events inside your transaction; call it within 'async with conn.transaction():' "
            "on an asyncpg connection"
        )
