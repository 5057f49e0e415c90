"""The ``processed_events`` table: which events each consumer group has finished.

A row (consumer group, event id) means the group finished that event: its handler ran
to completion, or it was dead-lettered. A redelivered event whose row exists skips its
handler. Rows are written after the handler, in batches, and the table is trimmed by
age (:func:`purge`): the retention must exceed how far back Kafka can redeliver an
event to the group (topic retention, or how far offsets can be reset), or a very late
redelivery would run its handler again.

Queries follow the measured limits in the project's field notes: one
``event_id = ANY(…)`` lookup per batch, one ``INSERT … SELECT unnest(…) ON CONFLICT
DO NOTHING`` per batch, the primary key led by the time-ordered (UUIDv7) event id so
lookups are index probes and inserts append (docs/adr/0006-consumer-daemon.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

import asyncpg

# Versioned DDL; applied in order by migrate(), each version once.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE processed_events (
            consumer_group text        NOT NULL,
            event_id       uuid        NOT NULL,
            topic          text        NOT NULL,
            partition      integer     NOT NULL,
            "offset"       bigint      NOT NULL,
            outcome        text        NOT NULL CHECK (outcome IN ('handled', 'dead_lettered', 'skipped')),
            processed_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, event_id)
        );
        CREATE INDEX processed_events_processed_at ON processed_events (processed_at);
        """,
    ),
    (
        2,
        # The event id leads the primary key: with (group, id) PostgreSQL planned the
        # lookup of a new group (no statistics yet) as a scan of the whole group, which
        # grew with every batch; with the id first each lookup is an index probe, and
        # time-ordered ids append at the index's right edge. BRIN instead of B-tree on
        # processed_at: rows arrive in time order, so BRIN serves purge's range scan at
        # a fraction of the per-insert cost.
        """
        ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey;
        ALTER TABLE processed_events ADD PRIMARY KEY (event_id, consumer_group);
        DROP INDEX processed_events_processed_at;
        CREATE INDEX processed_events_processed_at ON processed_events USING brin (processed_at);
        """,
    ),
)

_MIGRATION_LOCK = 0x6576_656E_7471  # pg_advisory_xact_lock key ("eventq"): one migrator at a time


class Executor(Protocol):
    """An asyncpg connection or pool."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


class Processed(NamedTuple):
    """One finished event, as recorded (a tuple: a batch holds thousands)."""

    event_id: str
    topic: str
    partition: int
    offset: int
    outcome: str = "handled"


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database lacks; return their versions.

    Idempotent, and safe when several daemons start at once: a transaction-scoped
    advisory lock lets one migrate while the others wait and then find nothing to do.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS eventq_schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM eventq_schema_migrations")}
        applied = []
        for version, ddl in MIGRATIONS:
            if version not in done:
                await conn.execute(ddl)
                await conn.execute("INSERT INTO eventq_schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
        return applied


async def finished(db: Executor, group: str, event_ids: Sequence[str]) -> dict[str, str]:
    """Outcome (handled, dead_lettered, skipped) of each id among ``event_ids`` that ``group`` finished
    (one query per batch)."""
    if not event_ids:
        return {}
    # Ids travel as one comma-joined text parameter: asyncpg's per-element array
    # encoding cost more than the query itself (see docs/benchmarks.md).
    rows = await db.fetch(
        "SELECT event_id::text, outcome FROM processed_events "
        "WHERE event_id = ANY(string_to_array($2, ',')::uuid[]) AND consumer_group = $1",
        group,
        ",".join(event_ids),
    )
    return {row[0]: row[1] for row in rows}


# A replayed dead letter that is handled turns its 'dead_lettered' row into 'handled';
# every other existing row is kept as it is.
_ON_CONFLICT = (
    "ON CONFLICT (event_id, consumer_group) DO UPDATE SET outcome = EXCLUDED.outcome, topic = EXCLUDED.topic, "
    'partition = EXCLUDED.partition, "offset" = EXCLUDED."offset", processed_at = now() '
    "WHERE processed_events.outcome = 'dead_lettered' AND EXCLUDED.outcome = 'handled'"
)


async def record(db: Executor, group: str, events: Sequence[Processed]) -> None:
    """Record finished events in one statement.

    Rows that exist are kept as they are, except that a ``dead_lettered`` row becomes
    ``handled`` (a replayed dead letter was handled). Pass a connection inside a
    transaction to make the rows part of that transaction.
    """
    if not events:
        return
    if len({e.event_id for e in events}) != len(events):
        # One statement may not touch a row twice (the same event id from two
        # partitions): keep one row per id, 'handled' over other outcomes.
        unique: dict[str, Processed] = {}
        for e in events:
            kept = unique.get(e.event_id)
            if kept is None or (kept.outcome != "handled" and e.outcome == "handled"):
                unique[e.event_id] = e
        events = list(unique.values())
    # Columns as comma-joined text (see finished); topic names cannot contain commas
    # (Kafka allows only [a-zA-Z0-9._-]), and outcomes are fixed words.
    await db.execute(
        "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\", outcome) "
        "SELECT $1, * FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($3, ','), "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ',')) "
        + _ON_CONFLICT,
        group,
        ",".join([e.event_id for e in events]),
        ",".join([e.topic for e in events]),
        ",".join([str(e.partition) for e in events]),
        ",".join([str(e.offset) for e in events]),
        ",".join([e.outcome for e in events]),
    )


async def claim(conn: Executor, group: str, event: Processed) -> bool:
    """Insert one row unless it exists (a ``dead_lettered`` row is taken over); True if this call got it.

    Used first thing inside a transactional handler's transaction: a concurrent
    claimant of the same event waits on the row lock and then gets False, so the
    transaction's side effects happen once however many consumers see the event.
    """
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\", outcome) "
        "VALUES ($1, $2::uuid, $3, $4, $5, $6) " + _ON_CONFLICT + " RETURNING 1",
        group,
        event.event_id,
        event.topic,
        event.partition,
        event.offset,
        event.outcome,
    )
    return bool(rows)


async def purge(db: Executor, older_than: timedelta, *, group: str | None = None) -> int:
    """Delete rows recorded more than ``older_than`` ago (of one group, or all); return how many."""
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive")
    if group is None:
        status = await db.execute("DELETE FROM processed_events WHERE processed_at < now() - $1::interval", older_than)
    else:
        status = await db.execute(
            "DELETE FROM processed_events WHERE processed_at < now() - $1::interval AND consumer_group = $2",
            older_than,
            group,
        )
    return int(status.split()[-1])
