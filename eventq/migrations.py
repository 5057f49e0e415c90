"""eventq's tables in PostgreSQL, as versioned migrations (``eventq db migrate``).

Versions 1-3 build ``processed_events`` (:mod:`eventq.consumers.store`), version 4 the
transactional outbox (:mod:`eventq.outbox`). Each version is applied once, in order, and
none rewrites a table or holds a lock on it for long.
"""

from __future__ import annotations

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
    (
        3,
        # CloudEvents identify an event by (source, id): each row says its source. A column
        # with a constant default is added without rewriting the table or holding a lock
        # for long; the key stays as narrow as it was (see row_id and alternate_id). Rows
        # written before have source '' and match an event of that id from any source.
        "ALTER TABLE processed_events ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT ''",
    ),
    (
        4,
        # The transactional outbox (eventq.outbox; docs/adr/0017-transactional-outbox.md). A row is an
        # encoded event: the record's parts as plain columns, so the relay sends it without
        # decoding or validating again. ``id`` is assigned when the row is inserted, after the
        # adding statement took its key's lock, so within a key id order is commit order.
        # Published rows are deleted (or kept ``published_at`` until purged); the partial
        # index serves the relay's "next pending rows of my shares" scan.
        """
        CREATE TABLE eventq_outbox (
            id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            share          smallint    NOT NULL,
            topic          text        NOT NULL,
            event_id       text        NOT NULL,
            event_type     text        NOT NULL,
            key            bytea,
            value          bytea       NOT NULL,
            timestamp_ms   bigint      NOT NULL,
            source         text        NOT NULL,
            "time"         text        NOT NULL,
            correlation_id text        NOT NULL,
            headers        jsonb,
            created_at     timestamptz NOT NULL DEFAULT now(),
            attempts       integer     NOT NULL DEFAULT 0,
            last_error     text,
            parked_at      timestamptz,
            published_at   timestamptz
        );
        CREATE INDEX eventq_outbox_pending ON eventq_outbox (id) WHERE parked_at IS NULL AND published_at IS NULL;
        CREATE INDEX eventq_outbox_published ON eventq_outbox (published_at) WHERE published_at IS NOT NULL;
        """,
    ),
)

_MIGRATION_LOCK = 0x6576_656E_7471  # pg_advisory_xact_lock key ("eventq"): one migrator at a time


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database lacks; return their versions.

    Idempotent, and safe when several daemons start at once: a transaction-scoped
    advisory lock lets one migrate while the others wait and then find nothing to do.
    No migration rewrites a table or locks it for long (see MIGRATIONS).
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
