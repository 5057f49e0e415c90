"""The dedupe stage's lookups: one query in flight at a time, later lookups sharing the next one."""

from __future__ import annotations

import asyncio

import pytest

from eventq.consumers.dedupe import Lookups

Identity = tuple[str, str]


async def test_lookups_asked_while_a_query_runs_share_the_next_query() -> None:
    """Three lookups, the last two asked during the first's query, cost two queries; each finds its own rows."""
    queries: list[list[Identity]] = []
    release = asyncio.Event()

    async def query(ids: list[Identity]) -> dict[Identity, str]:
        queries.append(ids)
        if len(queries) == 1:
            await release.wait()
        return {identity: "handled" for identity in ids if identity[0].startswith("done")}

    lookups = Lookups(query)
    first = asyncio.create_task(lookups.finished([("done-1", "s")]))
    await asyncio.sleep(0)
    second = asyncio.create_task(lookups.finished([("new-2", "s")]))
    third = asyncio.create_task(lookups.finished([("done-3", "s")]))
    await asyncio.sleep(0)
    release.set()

    assert (await first) == {("done-1", "s"): "handled"}
    assert ("new-2", "s") not in await second
    assert (await third)[("done-3", "s")] == "handled"
    assert queries == [[("done-1", "s")], [("new-2", "s"), ("done-3", "s")]]
    await lookups.stop()


async def test_a_failed_query_fails_only_the_lookups_it_carried() -> None:
    """A query's error reaches the lookups in it; the next lookup gets a query of its own."""
    calls = 0

    async def query(ids: list[Identity]) -> dict[Identity, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("query failed")
        return {}

    lookups = Lookups(query)
    with pytest.raises(RuntimeError, match="query failed"):
        await lookups.finished([("a", "s")])
    assert await lookups.finished([("b", "s")]) == {}
    assert await lookups.finished([]) == {} and calls == 2  # no ids: no query
    await lookups.stop()
