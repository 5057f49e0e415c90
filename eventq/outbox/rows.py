"""An event as an outbox row, and the statements that add rows inside a transaction.

A row holds the record exactly as :meth:`~eventq.producers.Producer.publish` would
send it (key, value, timestamp, the envelope headers, the trace context of the event's
``create`` span), so the relay sends it without decoding or validating anything again.

The adding statement, one round trip, does three things in this order:

1. takes a transaction-scoped advisory lock per partition key it adds (sorted, so two
   statements never take the same keys in opposite orders);
2. inserts the rows, which get their ``id`` only then: a transaction that adds an
   event of a key waits until every earlier transaction holding that key's lock has
   committed or rolled back, so **within a key, id order is commit order**;
3. ``pg_notify('eventq_outbox', '')``, delivered when (and only if) the transaction
   commits, waking the relays.

Besides asyncpg (:class:`~eventq.outbox.writer.Outbox`), the same statement is given
for DB-API drivers as :data:`INSERT_SQL` (psycopg's ``%(name)s`` style) and
:data:`INSERT_SQL_NAMED` (SQLAlchemy ``text()``'s ``:name`` style), with one
:meth:`OutboxRow.params` per event.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import orjson

from eventq.errors import ConfigError, InvalidEvent
from eventq.kafka import TOPIC_NAME
from eventq.schemas.envelope import RecordParts

SHARES = 16
"""The outbox is split into this many shares by partition key; one relay at a time publishes a share."""
CHANNEL = "eventq_outbox"
"""The NOTIFY channel an adding transaction signals on commit."""
KEY_LOCK_CLASS = 0x65767130
"""Advisory lock class (``pg_advisory_xact_lock(class, key)``) of the per-key locks taken when adding."""
SHARE_LOCK_CLASS = 0x65767131
"""Advisory lock class of the session locks a relay holds on the shares it publishes."""



class OutboxRow(NamedTuple):
    """One event, encoded, as the plain values of its outbox row (the parameters of :data:`INSERT_SQL`)."""

    topic: str
    share: int
    lock: int | None  # the key's advisory lock (a signed 32-bit hash), None for an event without a key
    event_id: str
    event_type: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    source: str
    time: str
    correlation_id: str
    headers: str | None  # JSON [[name, value], ...]: causation id, subject, trace context

    def params(self) -> dict[str, Any]:
        """The row as named statement parameters, for :data:`INSERT_SQL` / :data:`INSERT_SQL_NAMED`."""
        return self._asdict()


def check_topic(topic: str) -> str:
    """``topic`` if Kafka accepts it as a topic name, else ConfigError (before any row is written)."""
    if not TOPIC_NAME.fullmatch(topic):
        shown = topic if len(topic) <= 100 else topic[:100] + "…"
        raise ConfigError(
            f"topic {shown!r} is not a Kafka topic name; use 1 to 249 letters, digits, '.', '_' or '-'"
        )
    return topic


def key_lock(key: bytes) -> int:
    """The advisory lock of a partition key: its CRC-32 as a signed 32-bit integer."""
    crc = zlib.crc32(key)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def to_row(topic: str, parts: RecordParts, event_type: str) -> OutboxRow:
    """The row of one encoded event (:func:`~eventq.schemas.envelope.encode_parts`) bound for ``topic``."""
    key, value, timestamp_ms, event_id, source, _type, time, correlation, extra = parts
    if key is None:
        lock = None
        share = zlib.crc32(event_id) % SHARES
    else:
        lock = key_lock(key)
        share = (lock & 0x7FFFFFFF) % SHARES
    headers = orjson.dumps([[name, raw.decode()] for name, raw in extra]).decode() if extra else None
    row = OutboxRow(
        topic, share, lock, event_id.decode(), event_type, key, value, timestamp_ms, source.decode(),
        time.decode(), correlation.decode(), headers,
    )
    # PostgreSQL text and jsonb cannot hold U+0000 (Kafka headers could): refuse it here, in the caller.
    if "\x00" in row.event_id or "\x00" in row.source or "\x00" in event_type or "\x00" in row.correlation_id or (
        extra and any(b"\x00" in raw for _, raw in extra)
    ):
        raise InvalidEvent(f"event {row.event_id[:100]!r} has a NUL character in an attribute; the outbox's "
                           "PostgreSQL text columns cannot hold it")
    return row


_COLUMNS = (
    "topic, share, event_id, event_type, key, value, timestamp_ms, source, \"time\", correlation_id, headers"
)
# The lock subquery is an aggregate: it has taken every lock before it yields its one row, and
# rows (and so their ids) are formed only from it.
_LOCK_ONE = (
    "(SELECT count(pg_advisory_xact_lock({cls}, l)), pg_notify('{channel}', '') "
    "FROM (SELECT CAST({lock} AS integer) AS l) AS k WHERE l IS NOT NULL) AS locked"
)


def _one_row_sql(param: Any) -> str:
    names = ("topic", "share", "event_id", "event_type", "key", "value", "timestamp_ms", "source", "time",
             "correlation_id", "headers")
    casts = ("text", "smallint", "text", "text", "bytea", "bytea", "bigint", "text", "text", "text", "jsonb")
    # CAST(... AS ...), not ::, which SQLAlchemy's text() would take for part of a :name parameter
    values = ", ".join(f"CAST({param(n)} AS {c})" for n, c in zip(names, casts, strict=True))
    return (
        f"INSERT INTO eventq_outbox ({_COLUMNS}) SELECT {values} FROM "
        + _LOCK_ONE.format(cls=KEY_LOCK_CLASS, channel=CHANNEL, lock=param("lock"))
    )


INSERT_SQL = _one_row_sql(lambda name: f"%({name})s")
"""Add one event (:meth:`OutboxRow.params`) with a DB-API driver using ``%(name)s`` parameters (psycopg)."""
INSERT_SQL_NAMED = _one_row_sql(lambda name: f":{name}")
"""The same statement with ``:name`` parameters, for SQLAlchemy's ``text()``."""

_POSITIONS = {name: i + 1 for i, name in enumerate(OutboxRow._fields)}
ASYNCPG_INSERT_ONE = _one_row_sql(lambda name: f"${_POSITIONS[name]}")
"""The same statement with asyncpg's ``$n`` parameters, in :class:`OutboxRow` field order."""

ASYNCPG_INSERT_MANY = (
    f"INSERT INTO eventq_outbox ({_COLUMNS}) "
    "SELECT $1::text, r.share, r.event_id, r.event_type, r.key, r.value, r.timestamp_ms, r.source, r.time, "
    "r.correlation_id, r.headers "
    f"FROM (SELECT count(pg_advisory_xact_lock({KEY_LOCK_CLASS}, l)), pg_notify('{CHANNEL}', '') "
    "FROM (SELECT DISTINCT l FROM unnest($2::integer[]) AS u(l) WHERE l IS NOT NULL ORDER BY l) AS k) AS locked, "
    "unnest($3::smallint[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bigint[], $9::text[], "
    "$10::text[], $11::text[], $12::jsonb[]) WITH ORDINALITY "
    "AS r(share, event_id, event_type, key, value, timestamp_ms, source, time, correlation_id, headers, n) "
    "ORDER BY r.n"
)
"""Add several events bound for one topic (ids in the order given): ``$1`` the topic, ``$2`` each row's
lock, ``$3``.. one array per remaining column."""


def many_args(topic: str, rows: list[OutboxRow]) -> tuple[Any, ...]:
    """The arguments of :data:`ASYNCPG_INSERT_MANY` for ``rows`` (all bound for ``topic``)."""
    columns = list(zip(*rows, strict=True))
    # columns[0] is the topic, [1] the share, [2] the lock, then event_id .. headers
    return (topic, list(columns[2]), list(columns[1]), *(list(c) for c in columns[3:]))
