"""Every statement on ``eventq_outbox`` besides adding rows (:mod:`eventq.outbox.rows`).

Values from rows (topics, errors) travel as parameters, never as statement text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eventq.outbox.rows import SHARE_LOCK_CLASS, SHARES

PENDING = "parked_at IS NULL AND published_at IS NULL"

NEXT_ROWS = (
    'SELECT id, topic, event_id, event_type, key, value, timestamp_ms, source, "time", correlation_id, headers '
    f"FROM eventq_outbox WHERE {PENDING} AND share = ANY($1::smallint[]) AND topic <> ALL($2::text[]) "
    "ORDER BY id LIMIT $3"
)
"""The next pending rows of some shares (``$1``), but for topics backing off (``$2``), in id order."""

DELETE = "DELETE FROM eventq_outbox WHERE id = ANY($1::bigint[])"
MARK_PUBLISHED = "UPDATE eventq_outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
FAILED = "UPDATE eventq_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])"
PARK = (
    "UPDATE eventq_outbox SET attempts = attempts + 1, last_error = $2, parked_at = now() "
    "WHERE id = ANY($1::bigint[])"
)
PURGE_PUBLISHED = "DELETE FROM eventq_outbox WHERE published_at < now() - $1::interval"
BACKLOG_CAP = 100_000
BACKLOG = (
    f"SELECT (SELECT count(*) FROM (SELECT 1 FROM eventq_outbox WHERE {PENDING} LIMIT {BACKLOG_CAP}) AS p), "
    f"(SELECT extract(epoch FROM now() - created_at)::float8 FROM eventq_outbox WHERE {PENDING} ORDER BY id LIMIT 1)"
)
"""Pending rows (counted up to BACKLOG_CAP, so the gauge costs little however long the backlog) and the age of
the first pending row: the relay's gauges, every few seconds, between rounds."""

HOLDERS = (
    "SELECT l.objid::integer AS share, l.pid, a.application_name FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objsubid = 2 AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
"""(share, pid, application name) of every share lock a relay holds (two-key advisory locks show objsubid 2),
plus each relay's member lock (share = SHARES)."""
HOLDERS_ARGS = (SHARE_LOCK_CLASS,)

_STATUS = (
    "SELECT topic, "
    f"count(*) FILTER (WHERE {PENDING}) AS pending, "
    "count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked, "
    "count(*) FILTER (WHERE published_at IS NOT NULL) AS kept, "
    f"extract(epoch FROM now() - min(created_at) FILTER (WHERE {PENDING}))::float8 AS oldest_age_s, "
    f"max(attempts) FILTER (WHERE {PENDING}) AS most_attempts, "
    "(array_agg(last_error ORDER BY id DESC) FILTER (WHERE last_error IS NOT NULL AND published_at IS NULL))[1] "
    "AS last_error "
    "FROM eventq_outbox GROUP BY topic ORDER BY topic"
)


@dataclass(frozen=True)
class TopicStatus:
    """What waits in the outbox for one topic."""

    topic: str
    pending: int
    parked: int
    kept: int
    oldest_age_s: float | None
    most_attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Relayer:
    """A running relay, as PostgreSQL sees it: its connection and the shares it holds."""

    pid: int
    name: str
    shares: tuple[int, ...]


@dataclass(frozen=True)
class OutboxStatus:
    """The whole outbox: per topic, and who relays it."""

    topics: tuple[TopicStatus, ...]
    relays: tuple[Relayer, ...]
    unowned_shares: tuple[int, ...]

    @property
    def pending(self) -> int:
        return sum(t.pending for t in self.topics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "parked": sum(t.parked for t in self.topics),
            "oldest_age_s": max((t.oldest_age_s for t in self.topics if t.oldest_age_s is not None), default=None),
            "topics": [asdict(t) for t in self.topics],
            "relays": [asdict(r) for r in self.relays],
            "unowned_shares": list(self.unowned_shares),
        }


async def status(conn: Any) -> OutboxStatus:
    """The outbox as it stands (one scan of the table: it is kept small)."""
    topics = tuple(
        TopicStatus(r["topic"], r["pending"], r["parked"], r["kept"], r["oldest_age_s"], r["most_attempts"] or 0,
                    r["last_error"])
        for r in await conn.fetch(_STATUS)
    )
    held: dict[int, tuple[str, list[int]]] = {}
    for r in await conn.fetch(HOLDERS, *HOLDERS_ARGS):
        name, shares = held.setdefault(r["pid"], (r["application_name"] or "", []))
        if r["share"] < SHARES:
            shares.append(r["share"])
    relays = tuple(Relayer(pid, name, tuple(sorted(shares))) for pid, (name, shares) in sorted(held.items()))
    owned = {s for r in relays for s in r.shares}
    return OutboxStatus(topics, relays, tuple(s for s in range(SHARES) if s not in owned))
