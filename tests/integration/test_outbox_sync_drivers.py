"""The outbox from synchronous drivers: the examples (psycopg 3, SQLAlchemy 2 ``Session``) against the real
PostgreSQL and Kafka. Each test runs once per driver; what is asserted is read back with asyncpg and a plain
Kafka consumer, not with the driver under test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import asyncpg
import psycopg
import pytest
from sqlalchemy.orm import Session

from eventq.config import KafkaSettings
from eventq.database import DatabaseSettings
from eventq.errors import SchemaViolation
from eventq.outbox import Relay, RelaySettings
from eventq.schemas import Event, decode
from tests.conftest import TopicFactory, read_to_end

# The examples are scripts, not a package: what is tested is the files themselves.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import outbox_psycopg  # noqa: E402
import outbox_sqlalchemy  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER_ID, CUSTOMER, AMOUNT, CURRENCY = "o-1", "c-7", 1250, "EUR"
PAYLOAD = {"order_id": "o-1", "customer_id": "c-7", "amount_cents": 1250, "currency": "EUR"}
INVALID_AMOUNT = -1  # the schema says "minimum": 0


class Boom(Exception):
    """What the app raises after adding, inside the transaction."""


class Driver(NamedTuple):
    """One example, seen through the same three calls."""

    create_tables: Callable[[str], None]
    place: Callable[[str, str, int], Event]  # (database URL, topic, amount_cents): commits
    place_then_fail: Callable[[str, str], None]  # adds the order and its event, then raises Boom


def _psycopg_tables(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(outbox_psycopg.ORDERS_DDL)


def _psycopg_place(url: str, topic: str, amount_cents: int) -> Event:
    order = outbox_psycopg.NewOrder(ORDER_ID, CUSTOMER, amount_cents, CURRENCY)
    return outbox_psycopg.place_order(url, order, topic=topic)


def _psycopg_place_then_fail(url: str, topic: str) -> None:
    with psycopg.connect(url) as conn, conn.transaction():
        outbox_psycopg.add_order(conn, outbox_psycopg.NewOrder(ORDER_ID, CUSTOMER, AMOUNT, CURRENCY), topic=topic)
        raise Boom


def _sqlalchemy_tables(url: str) -> None:
    engine = outbox_sqlalchemy.engine_for(url)
    try:
        outbox_sqlalchemy.Base.metadata.create_all(engine)
    finally:
        engine.dispose()


def _sqlalchemy_place(url: str, topic: str, amount_cents: int) -> Event:
    order = outbox_sqlalchemy.NewOrder(ORDER_ID, CUSTOMER, amount_cents, CURRENCY)
    engine = outbox_sqlalchemy.engine_for(url)
    try:
        return outbox_sqlalchemy.place_order(engine, order, topic=topic)
    finally:
        engine.dispose()


def _sqlalchemy_place_then_fail(url: str, topic: str) -> None:
    engine = outbox_sqlalchemy.engine_for(url)
    try:
        with Session(engine) as session, session.begin():
            order = outbox_sqlalchemy.NewOrder(ORDER_ID, CUSTOMER, AMOUNT, CURRENCY)
            outbox_sqlalchemy.add_order(session, order, topic=topic)
            raise Boom
    finally:
        engine.dispose()


DRIVERS = [
    pytest.param(Driver(_psycopg_tables, _psycopg_place, _psycopg_place_then_fail), id="psycopg"),
    pytest.param(Driver(_sqlalchemy_tables, _sqlalchemy_place, _sqlalchemy_place_then_fail), id="sqlalchemy"),
]


async def _relay(kafka: KafkaSettings, database: str) -> int:
    """Run a relay until the outbox is empty; the number of events it published."""
    relay = Relay(RelaySettings(kafka=kafka, database=DatabaseSettings(url=database)))
    async with asyncio.timeout(60):
        await relay.run(until_empty=True)
    return relay.relayed


async def _orders(database: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(database)
    try:
        found = await conn.fetch("SELECT order_id, customer_id, amount_cents, currency FROM shop_orders")
        return [tuple(r) for r in found]
    finally:
        await conn.close()


async def _outbox(database: str) -> tuple[int, int | None]:
    """Rows in eventq_outbox, and the last id ever drawn for one (None: no INSERT ever ran, even rolled back)."""
    conn = await asyncpg.connect(database)
    try:
        count = await conn.fetchval("SELECT count(*) FROM eventq_outbox")
        drawn = await conn.fetchval(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('eventq_outbox', 'id')::regclass)"
        )
        return count, drawn
    finally:
        await conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_committed_event_is_published_once_with_the_order(
    driver: Driver, database: str, new_topic: TopicFactory, kafka_settings: KafkaSettings
) -> None:
    """An event added in a committed transaction reaches its topic exactly once, as added, and the order row is kept."""
    topic = await new_topic()
    driver.create_tables(database)

    event = driver.place(database, topic, AMOUNT)
    relayed = await _relay(kafka_settings, database)

    records = await read_to_end(kafka_settings, topic)
    assert relayed == 1
    assert len(records) == 1
    [record] = records
    got = decode(record.key, record.value, record.headers, timestamp_ms=record.timestamp)
    assert record.key == b"c-7"
    assert (got.id, got.type, got.key, got.data) == (event.id, "demo.order.created.v1", "c-7", PAYLOAD)
    assert await _orders(database) == [("o-1", "c-7", 1250, "EUR")]
    assert await _outbox(database) == (0, 1)  # the one row added was removed once published


@pytest.mark.parametrize("driver", DRIVERS)
async def test_rolled_back_transaction_leaves_no_order_no_row_and_publishes_nothing(
    driver: Driver, database: str, new_topic: TopicFactory, kafka_settings: KafkaSettings
) -> None:
    """A transaction that raises after adding its event leaves neither the order nor an outbox row, and the relay
    publishes nothing."""
    topic = await new_topic()
    driver.create_tables(database)

    with pytest.raises(Boom):
        driver.place_then_fail(database, topic)
    relayed = await _relay(kafka_settings, database)

    assert await _orders(database) == []
    assert await _outbox(database) == (0, 1)  # the outbox INSERT did run (an id was drawn), then rolled back
    assert relayed == 0
    assert await read_to_end(kafka_settings, topic) == []  # read up to every partition's end offset


@pytest.mark.parametrize("driver", DRIVERS)
async def test_invalid_event_raises_schema_violation_before_the_outbox_insert(
    driver: Driver, database: str, new_topic: TopicFactory
) -> None:
    """An event whose payload fails its schema raises SchemaViolation from outbox.row() before the outbox INSERT
    runs, and the order inserted before it is rolled back."""
    topic = await new_topic()
    driver.create_tables(database)

    with pytest.raises(SchemaViolation) as raised:
        driver.place(database, topic, INVALID_AMOUNT)

    assert raised.value.event_type == "demo.order.created.v1"
    assert raised.value.detail == "data.amount_cents must be bigger than or equal to 0"
    assert any("nothing was added" in note for note in raised.value.__notes__)  # the note Outbox.rows() adds
    assert await _orders(database) == []
    assert await _outbox(database) == (0, None)
