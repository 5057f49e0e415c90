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

import re
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

# Event ids that are not a lower-case UUID are stored as this UUIDv5 of the id text.
_ID_NAMESPACE = uuid.UUID("5d1c3f0e-8f43-4c8b-9a57-6576656e7471")
# The key of an event whose id's own key holds another source's event: a UUIDv5 of both.
_ALTERNATE_NAMESPACE = uuid.UUID("9b3e6f52-1c7d-4e0a-8d15-6576656e7472")
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_UUID = re.compile(_UUID)
_NOT_HEX = str.maketrans("", "", "0123456789abcdef")


def _all_canonical(joined: str, count: int) -> bool:
    """True if ``joined`` is ``count`` lower-case canonical UUIDs joined by commas (each its own key).

    Exact, and cheaper than a regex over the batch: the only characters that are not
    hex digits are a dash at offsets 8, 13, 18 and 23 of each id and the commas between.
    """
    if len(joined) != 37 * count - 1:
        return False
    dashes = "-" * count
    return (
        joined[8::37] == dashes and joined[13::37] == dashes and joined[18::37] == dashes
        and joined[23::37] == dashes and joined[36::37] == "," * (count - 1)
        and len(joined.translate(_NOT_HEX)) == 5 * count - 1
    )


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
    source: str = ""


def row_id(event_id: str) -> str:
    """The key (``event_id`` column) of an event id: the id itself when it is a lower-case
    UUID (every eventq producer's), else a UUIDv5 of it (CloudEvents ids are any string).

    The first source of an id to be recorded takes this key; see :func:`alternate_id`.
    """
    if len(event_id) == 36 and _CANONICAL_UUID.fullmatch(event_id):
        return event_id
    return str(uuid.uuid5(_ID_NAMESPACE, event_id))


def alternate_id(event_id: str, source: str) -> str:
    """The key of an event whose :func:`row_id` already holds another source's event of
    the same id (rare: two producers choosing the same id): a UUIDv5 of source and id."""
    return str(uuid.uuid5(_ALTERNATE_NAMESPACE, f"{source}\x00{event_id}"))


Identity = tuple[str, str]  # (event id, source): how CloudEvents tell events apart


async def finished(db: Executor, group: str, events: Sequence[Identity]) -> dict[Identity, str]:
    """Outcome (handled, dead_lettered, skipped) of each (id, source) among ``events`` that
    ``group`` finished: one indexed query per batch, and a second one only for ids whose
    key holds another source's event.

    A row written before sources were recorded (source '') counts for its id from any source.
    """
    if not events:
        return {}
    # Keys travel as one comma-joined text parameter: asyncpg's per-element array
    # encoding cost more than the query itself (see docs/benchmarks.md). They are UUIDs
    # (checked by one regex over the whole batch, or made by row_id()), so no comma or
    # quote from a record can reach the statement.
    joined = ",".join([event_id for event_id, _ in events])
    keys: dict[str, list[Identity]] | None = None
    if not _all_canonical(joined, len(events)):
        keys = {}
        for identity in events:
            keys.setdefault(row_id(identity[0]), []).append(identity)
        joined = ",".join(keys)
    rows = await _rows(db, group, joined)
    if not rows:
        return {}
    found: dict[Identity, str] = {}
    elsewhere: dict[str, Identity] = {}  # alternate key -> identity, for keys holding another source
    wanted = dict(events) if keys is None else {}  # id -> source, built in C
    if keys is None and len(wanted) == len(events):
        # (One row per key: no two rows can speak for one identity here.)
        for key, source, outcome in rows:
            want = wanted[key]
            if source == want or source == "":
                found[(key, want)] = outcome
            else:
                elsewhere[alternate_id(key, want)] = (key, want)
    else:
        if keys is None:
            keys = {}
            for identity in events:
                keys.setdefault(identity[0], []).append(identity)
        for key, source, outcome in rows:
            for identity in keys.get(key, ()):
                if source == "" or source == identity[1]:
                    found[identity] = outcome
                else:
                    elsewhere[alternate_id(*identity)] = identity
    if elsewhere:
        for key, source, outcome in await _rows(db, group, ",".join(elsewhere)):
            identity = elsewhere[key]
            if source == identity[1]:
                found[identity] = outcome
    return found


async def _rows(db: Executor, group: str, joined_keys: str) -> list[Any]:
    return await db.fetch(
        "SELECT event_id::text, source, outcome FROM processed_events "
        "WHERE event_id = ANY(string_to_array($2, ',')::uuid[]) AND consumer_group = $1",
        group,
        joined_keys,
    )


# A replayed dead letter that is handled turns its 'dead_lettered' row into 'handled';
# every other existing row is kept as it is.
_ON_CONFLICT = (
    "ON CONFLICT (event_id, consumer_group) DO UPDATE SET outcome = EXCLUDED.outcome, topic = EXCLUDED.topic, "
    'partition = EXCLUDED.partition, "offset" = EXCLUDED."offset", processed_at = now() '
    "WHERE processed_events.outcome = 'dead_lettered' AND EXCLUDED.outcome = 'handled' "
    "AND processed_events.source IN ('', EXCLUDED.source)"
)


async def record(db: Executor, group: str, events: Sequence[Processed]) -> None:
    """Record finished events (one statement; a second only where an id's key holds
    another source's event).

    Rows that exist are kept as they are, except that a ``dead_lettered`` row becomes
    ``handled`` (a replayed dead letter was handled). Pass a connection inside a
    transaction to make the rows part of that transaction. Text that comes from records
    (topic, source) travels as a typed ``text[]`` parameter: it is data, never syntax.
    """
    if not events:
        return
    joined = ",".join([e.event_id for e in events])
    keys = [e.event_id for e in events] if _all_canonical(joined, len(events)) else [
        row_id(e.event_id) for e in events
    ]
    rows: dict[str, tuple[str, Processed]] = {}
    if len(set(keys)) == len(keys):  # the usual batch: every key once
        rows = dict(zip(keys, zip(keys, events, strict=True), strict=True))
    else:
        for key, e in zip(keys, events, strict=True):
            kept = rows.get(key)
            if kept is None:
                rows[key] = (key, e)
            elif kept[1].source != e.source:  # the same id from two sources in one batch
                rows[alternate_id(e.event_id, e.source)] = (alternate_id(e.event_id, e.source), e)
            elif kept[1].outcome != "handled" and e.outcome == "handled":
                # One statement may not touch a row twice (the same event from two
                # partitions): keep one row per event, 'handled' over other outcomes.
                rows[key] = (key, e)
    written = await _insert(db, group, list(rows.values()))
    if written < len(rows):
        # Some keys were taken: by this very event (recorded meanwhile, fine), or by
        # another source's event of the same id, whose row must not swallow this one.
        taken = {key: source for key, source, _ in await _rows(db, group, ",".join(rows))}
        moved = [
            (alternate_id(e.event_id, e.source), e) for key, e in rows.values()
            if taken.get(key) not in (None, "", e.source)
        ]
        if moved:
            await _insert(db, group, moved)


async def _insert(db: Executor, group: str, keyed: list[tuple[str, Processed]]) -> int:
    """Insert keyed rows; how many were written (inserted, or turned from dead_lettered into handled)."""
    # Topics and sources: the batch's few distinct values as one text[] parameter, and
    # per row the index of its value (cheaper than a text[] element per row).
    pairs = {(e.topic, e.source) for _, e in keyed}
    if len(pairs) == 1:  # the usual batch: one topic, one source
        names = list(next(iter(pairs)))  # (a topic and a source may be the same text: two entries)
        topics, sources = ["1"] * len(keyed), ["2"] * len(keyed)
    else:
        values: dict[str, int] = {}
        topics = [str(values.setdefault(e.topic, len(values) + 1)) for _, e in keyed]
        sources = [str(values.setdefault(e.source, len(values) + 1)) for _, e in keyed]
        names = list(values)
    status = await db.execute(
        'INSERT INTO processed_events (consumer_group, event_id, topic, partition, "offset", outcome, source) '
        "SELECT $1, r.id, ($7::text[])[r.t], r.p, r.o, r.c, ($7::text[])[r.s] "
        "FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($3, ',')::integer[], "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ','), "
        "string_to_array($8, ',')::integer[]) AS r(id, t, p, o, c, s) " + _ON_CONFLICT,
        group,
        ",".join([key for key, _ in keyed]),
        ",".join(topics),
        ",".join([str(e.partition) for _, e in keyed]),
        ",".join([str(e.offset) for _, e in keyed]),
        ",".join([e.outcome for _, e in keyed]),
        names,
        ",".join(sources),
    )
    return int(status.split()[-1])


async def claim(conn: Executor, group: str, event: Processed) -> bool:
    """Insert one row unless it exists (a ``dead_lettered`` row is taken over); True if this call got it.

    Used first thing inside a transactional handler's transaction: a concurrent
    claimant of the same event waits on the row lock and then gets False, so the
    transaction's side effects happen once however many consumers see the event.
    """
    key = row_id(event.event_id)
    if await _claim(conn, group, key, event):
        return True
    # Not ours: the event's own row, or another source's event of the same id (the
    # conflicting row is locked by now, so what it says holds until we commit).
    holder = await conn.fetch(
        "SELECT source FROM processed_events WHERE event_id = $1::uuid AND consumer_group = $2", key, group
    )
    if holder and holder[0][0] not in ("", event.source):
        return await _claim(conn, group, alternate_id(event.event_id, event.source), event)
    return False


async def _claim(conn: Executor, group: str, key: str, event: Processed) -> bool:
    rows = await conn.fetch(
        'INSERT INTO processed_events (consumer_group, event_id, topic, partition, "offset", outcome, source) '
        "VALUES ($1, $2::uuid, $3, $4, $5, $6, $7) " + _ON_CONFLICT + " RETURNING 1",
        group,
        key,
        event.topic,
        event.partition,
        event.offset,
        event.outcome,
        event.source,
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
