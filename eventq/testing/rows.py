"""Where the kit keeps ``processed_events`` rows: in memory, or in a real PostgreSQL database.

Both answer the two questions the pipeline asks of the store — which of these events
did the group finish (the dedupe stage), and record these rows (the record stage) —
and keep every row written, in order, for the test to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventq.consumers import store


class MemoryRows:
    """Rows in memory (no database): keyed, like the table, by group and event identity."""

    def __init__(self) -> None:
        self.written: list[store.Processed] = []
        self._outcomes: dict[tuple[str, store.Identity], str] = {}

    async def finished(self, group: str, ids: Sequence[store.Identity]) -> dict[store.Identity, str]:
        found = {}
        for identity in ids:
            outcome = self._outcomes.get((group, identity))
            if outcome is not None:
                found[identity] = outcome
        return found

    async def record(self, group: str, rows: Sequence[store.Processed]) -> None:
        for row in rows:
            key = (group, (row.event_id, row.source))
            if key not in self._outcomes:  # as ON CONFLICT DO NOTHING
                self._outcomes[key] = row.outcome
                self.written.append(row)

    def claimed(self, group: str, row: store.Processed) -> None:
        """A transactional handler wrote ``row`` in its own transaction (a database kit only)."""
        self._outcomes[(group, (row.event_id, row.source))] = row.outcome
        self.written.append(row)


class DatabaseRows(MemoryRows):
    """Rows in PostgreSQL's ``processed_events``, through :mod:`eventq.consumers.store` (the daemon's queries)."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool

    async def finished(self, group: str, ids: Sequence[store.Identity]) -> dict[store.Identity, str]:
        return await store.finished(self.pool, group, ids)

    async def record(self, group: str, rows: Sequence[store.Processed]) -> None:
        if rows:
            await store.record(self.pool, group, rows)
            self.written.extend(rows)
