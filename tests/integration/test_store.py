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
from eventq.consumers.store import Processed, finished, purge, record
from eventq.database import DatabaseSettings, connect
from eventq.errors import DatabaseUnavailable
from eventq.migrations import MIGRATIONS, migrate
from eventq.schemas.envelope import new_event_id

pytestmark = pytest.mark.postgres


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


def done(event_id: str, outcome: str = "handled", offset: int = 0, source: str = "orders-service") -> Processed:
    return Processed(event_id=event_id, topic="orders", partition=0, offset=offset, outcome=outcome, source=source)


async def ids_finished(
    conn: asyncpg.Connection, group: str, ids: list[str], source: str = "orders-service"
) -> set[str]:
    return {event_id for event_id, _ in await finished(conn, group, [(i, source) for i in ids])}


async def test_recorded_events_are_found_for_their_group_only(conn: asyncpg.Connection) -> None:
    """One lookup returns exactly the ids the group recorded; another group sees none of them."""
    ids = [new_event_id() for _ in range(500)]
    await record(conn, "billing", [done(i, offset=n) for n, i in enumerate(ids[:300])])
    assert await ids_finished(conn, "billing", ids) == set(ids[:300])
    assert await ids_finished(conn, "shipping", ids) == set()


async def test_the_same_id_from_two_sources_is_two_events(conn: asyncpg.Connection) -> None:
    """CloudEvents identify an event by (source, id): a row for one source does not finish the other's event."""
    event_id = new_event_id()
    await record(conn, "billing", [done(event_id, source="orders-service")])
    found = await finished(conn, "billing", [(event_id, "orders-service"), (event_id, "legacy-shop")])
    assert found == {(event_id, "orders-service"): "handled"}
    await record(conn, "billing", [done(event_id, source="legacy-shop")])
    assert await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = 'billing'") == 2


async def test_a_second_source_of_an_id_recorded_later_or_in_the_same_batch_gets_its_own_row(
    conn: asyncpg.Connection,
) -> None:
    """Two more sources of one id — one in a later statement, two in one statement — each get a row and are found."""
    event_id = new_event_id()
    await record(conn, "billing", [done(event_id, source="a")])
    await record(conn, "billing", [done(event_id, source="b"), done(event_id, source="c", offset=1)])
    found = await finished(conn, "billing", [(event_id, s) for s in ("a", "b", "c", "d")])
    assert found == {(event_id, "a"): "handled", (event_id, "b"): "handled", (event_id, "c"): "handled"}
    await record(conn, "billing", [done(event_id, source="b")])  # recorded again: nothing changes
    assert await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = 'billing'") == 3


async def test_a_transactional_claim_of_another_sources_id_gets_its_own_row(database: str) -> None:
    """claim() of (id, b) when (id, a) holds the id's key succeeds once, and a second claim of (id, b) fails."""
    from eventq.consumers.store import claim

    event_id = new_event_id()
    conn = await asyncpg.connect(database)
    try:
        await record(conn, "billing", [done(event_id, source="a")])
        assert await claim(conn, "billing", done(event_id, source="b")) is True
        assert await claim(conn, "billing", done(event_id, source="b")) is False
        assert await claim(conn, "billing", done(event_id, source="a")) is False
        assert await ids_finished(conn, "billing", [event_id], source="b") == {event_id}
    finally:
        await conn.close()


async def test_any_string_id_and_hostile_text_are_recorded_as_data(conn: asyncpg.Connection) -> None:
    """Ids that are not UUIDs, and topics and sources with commas, quotes and newlines, are stored and found."""
    ids = ["A234-1234-1234", "x" * 10_000, "a,b", "'; DROP TABLE processed_events; --", "01A2-UPPER"]
    source = 'src,"\\n\n'
    hostile = [Processed(i, "orders,x", 0, n, "handled", source) for n, i in enumerate(ids)]
    await record(conn, "billing", hostile)
    found = await finished(conn, "billing", [(i, source) for i in ids])
    assert set(found) == {(i, source) for i in ids}
    topics = await conn.fetch("SELECT DISTINCT topic FROM processed_events WHERE consumer_group = 'billing'")
    assert [r["topic"] for r in topics] == ["orders,x"]


async def test_a_topic_and_a_source_of_the_same_text_are_recorded(conn: asyncpg.Connection) -> None:
    """A batch whose one topic and one source are the same string records both columns."""
    event_id = new_event_id()
    await record(conn, "billing", [Processed(event_id, "orders", 0, 0, "handled", "orders")])
    row = await conn.fetchrow("SELECT topic, source FROM processed_events WHERE consumer_group = 'billing'")
    assert (row["topic"], row["source"]) == ("orders", "orders")


async def test_a_row_from_before_sources_were_recorded_matches_any_source(conn: asyncpg.Connection) -> None:
    """A row recorded without a source (written before migration 3) still makes a redelivery skip its handler."""
    event_id = new_event_id()
    await record(conn, "billing", [done(event_id, source="")])
    assert await ids_finished(conn, "billing", [event_id], source="orders-service") == {event_id}


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
    assert await ids_finished(conn, "billing", [event_id]) == set()


async def test_purge_deletes_only_rows_older_than_the_age(conn: asyncpg.Connection) -> None:
    """purge removes rows recorded before the cut-off (optionally of one group) and keeps newer ones."""
    old, recent, other = new_event_id(), new_event_id(), new_event_id()
    await record(conn, "billing", [done(old), done(recent)])
    await record(conn, "shipping", [done(other)])
    await conn.execute("UPDATE processed_events SET processed_at = now() - interval '40 days' WHERE event_id <> $1",
                       uuid.UUID(recent))
    assert await purge(conn, timedelta(days=30), group="shipping") == 1
    assert await purge(conn, timedelta(days=30)) == 1
    assert await ids_finished(conn, "billing", [old, recent]) == {recent}


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


async def test_migration_3_upgrades_a_table_with_rows_while_several_migrate_at_once(database: str) -> None:
    """A version-2 table with rows gets its source column under three concurrent migrators; old rows still dedupe."""
    setup = await asyncpg.connect(database)
    try:
        await setup.execute(
            "DROP TABLE processed_events; DROP TABLE eventq_outbox; DELETE FROM eventq_schema_migrations"
        )
        for version, ddl in MIGRATIONS[:2]:
            await setup.execute(ddl)
            await setup.execute("INSERT INTO eventq_schema_migrations (version) VALUES ($1)", version)
        old = [new_event_id() for _ in range(2000)]
        await setup.execute(
            "INSERT INTO processed_events (consumer_group, event_id, topic, partition, \"offset\", outcome) "
            "SELECT 'billing', unnest($1::uuid[]), 'orders', 0, 0, 'handled'", old,
        )
    finally:
        await setup.close()
    conns = [await asyncpg.connect(database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results) == [[], [], [3, 4]]
        assert await ids_finished(conns[0], "billing", old[:10], source="anyone") == set(old[:10])
        fresh = new_event_id()
        await record(conns[0], "billing", [done(fresh, source="a"), done(fresh, source="b")])
        assert await ids_finished(conns[0], "billing", [fresh], source="a") == {fresh}
        assert await ids_finished(conns[0], "billing", [fresh], source="b") == {fresh}
        key = await conns[0].fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'processed_events_pkey'"
        )
        assert key == "PRIMARY KEY (event_id, consumer_group)"  # as narrow as before
    finally:
        for c in conns:
            await c.close()
