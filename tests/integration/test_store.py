"""The processed_events store and `eventq db` against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from click.testing import CliRunner

from eventq.cli import main
from eventq.consumers.store import MIGRATIONS, Processed, finished, migrate, purge, record
from eventq.database import DatabaseSettings, connect
from eventq.errors import DatabaseUnavailable
from eventq.schemas.envelope import new_event_id

pytestmark = pytest.mark.postgres


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


def done(event_id: str, outcome: str = "handled", offset: int = 0) -> Processed:
    return Processed(event_id=event_id, topic="orders", partition=0, offset=offset, outcome=outcome)


async def test_recorded_events_are_found_for_their_group_only(conn: asyncpg.Connection) -> None:
    """One lookup returns exactly the ids the group recorded; another group sees none of them."""
    ids = [new_event_id() for _ in range(500)]
    await record(conn, "billing", [done(i, offset=n) for n, i in enumerate(ids[:300])])
    assert set(await finished(conn, "billing", ids)) == set(ids[:300])
    assert set(await finished(conn, "shipping", ids)) == set()


async def test_recording_twice_keeps_one_row_and_only_a_dead_letter_becomes_handled(conn: asyncpg.Connection) -> None:
    """Recording again adds no row; a handled row stays handled; a dead_lettered row becomes handled (replay)."""
    handled, lettered = new_event_id(), new_event_id()
    await record(conn, "billing", [done(handled, "handled"), done(lettered, "dead_lettered")])
    await record(conn, "billing", [done(handled, "dead_lettered"), done(lettered, "handled"), done(new_event_id())])
    rows = await conn.fetch("SELECT event_id::text, outcome FROM processed_events WHERE consumer_group = 'billing'")
    outcomes = {r["event_id"]: r["outcome"] for r in rows}
    assert len(rows) == 3
    assert (outcomes[handled], outcomes[lettered]) == ("handled", "handled")


async def test_rows_written_in_a_rolled_back_transaction_do_not_exist(conn: asyncpg.Connection) -> None:
    """Recording inside a transaction that rolls back leaves the event unprocessed (transactional mode)."""
    event_id = new_event_id()
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await record(conn, "billing", [done(event_id)])
            raise RuntimeError("handler side effect failed")
    assert set(await finished(conn, "billing", [event_id])) == set()


async def test_purge_deletes_only_rows_older_than_the_age(conn: asyncpg.Connection) -> None:
    """purge removes rows recorded before the cut-off (optionally of one group) and keeps newer ones."""
    old, recent, other = new_event_id(), new_event_id(), new_event_id()
    await record(conn, "billing", [done(old), done(recent)])
    await record(conn, "shipping", [done(other)])
    await conn.execute("UPDATE processed_events SET processed_at = now() - interval '40 days' WHERE event_id <> $1",
                       uuid.UUID(recent))
    assert await purge(conn, timedelta(days=30), group="shipping") == 1
    assert await purge(conn, timedelta(days=30)) == 1
    assert set(await finished(conn, "billing", [old, recent])) == {recent}


async def test_concurrent_migrations_apply_each_version_once(database: str) -> None:
    """Several daemons migrating at once leave each migration applied exactly once."""
    conns = [await asyncpg.connect(database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        versions = await conns[0].fetch("SELECT version FROM eventq_schema_migrations ORDER BY version")
    finally:
        for c in conns:
            await c.close()
    assert results == [[], [], []]  # the fixture migrated already
    assert [v["version"] for v in versions] == [v for v, _ in MIGRATIONS]


async def test_unreachable_database_is_database_unavailable() -> None:
    """Connecting to a port with no PostgreSQL raises DatabaseUnavailable naming the URL, not the password."""
    settings = DatabaseSettings(url="postgresql://svc:s3cret@127.0.0.1:1/x", connect_timeout_s=2)
    with pytest.raises(DatabaseUnavailable, match=r"postgresql://svc:\*\*\*@127.0.0.1:1/x") as info:
        await connect(settings)
    assert info.value.retriable and "s3cret" not in str(info.value)


async def test_db_commands_migrate_and_purge(database: str) -> None:
    """`eventq db migrate` reports an up-to-date database and `eventq db purge` the rows it deleted."""

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--database-url", database])
        return result.exit_code, result.output

    assert await asyncio.to_thread(cli, "db", "migrate") == (0, "database is up to date\n")
    code, output = await asyncio.to_thread(cli, "db", "purge", "--older-than", "30d")
    assert (code, output) == (0, "deleted 0 processed_events rows recorded more than 30d ago\n")


async def test_one_statement_may_carry_the_same_event_twice(conn: asyncpg.Connection) -> None:
    """Rows of one id from two partitions in one batch give one row, 'handled' winning over 'dead_lettered'."""
    event_id = new_event_id()
    await record(conn, "billing", [done(event_id, "dead_lettered", offset=1), done(event_id, "handled", offset=2)])
    rows = await conn.fetch("SELECT outcome FROM processed_events WHERE event_id = $1", uuid.UUID(event_id))
    assert [r["outcome"] for r in rows] == ["handled"]


async def test_two_racing_claims_of_one_event_let_exactly_one_transaction_win(database: str) -> None:
    """The second claimant waits on the first's row lock and then gets False: a transactional handler runs once."""
    from eventq.consumers.store import claim

    event_id = new_event_id()
    first, second = await asyncpg.connect(database), await asyncpg.connect(database)
    try:
        first_tx, second_tx = first.transaction(), second.transaction()
        await first_tx.start()
        await second_tx.start()
        assert await claim(first, "billing", done(event_id)) is True
        racing = asyncio.ensure_future(claim(second, "billing", done(event_id)))
        await asyncio.sleep(0.3)
        assert not racing.done()  # blocked on the first transaction's row
        await first_tx.commit()
        assert await asyncio.wait_for(racing, 5) is False
        await second_tx.rollback()
    finally:
        await first.close()
        await second.close()
