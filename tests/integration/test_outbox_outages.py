"""The relay through outages of its broker and its database: it waits, reports, loses nothing."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import asyncpg
import orjson
import pytest

from eventq.config import KafkaSettings
from eventq.kafka import create_topics
from eventq.outbox import Outbox, Relay, status
from eventq.producers import ProducerSettings
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from eventq_dev.devstack.kafka import KafkaBroker
from tests.conftest import Reader, TopicFactory, read_to_end
from tests.integration.consumer_kit import order
from tests.integration.tcp_proxy import proxy_database
from tests.integration.test_outbox import relay_settings, running

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
OUTBOX = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))


def readyz(relay: Relay) -> tuple[int, dict[str, object]]:
    assert relay.health is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.health.port}/readyz", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def add(database: str, topic: str, numbers: range) -> list[str]:
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            return [a.event_id for a in await OUTBOX.add_many(conn, [order(n) for n in numbers], topic=topic)]
    finally:
        await conn.close()


async def until(predicate: object, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # type: ignore[operator]
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_broker_outage_keeps_the_rows_pending_and_visible_then_they_are_all_published(
    broker: KafkaBroker, database: str
) -> None:
    """Broker stopped while the relay runs: /readyz says 503, status shows the events pending, the relay lives;
    after the restart every event is on the topic and the outbox is empty."""
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}")
    topic = "outage.outbox"
    await create_topics(kafka, [topic], partitions=3)
    relay = Relay(relay_settings(kafka, database, health_port=0))
    conn = await asyncpg.connect(database)
    try:
        async with running(relay):
            first = await add(database, topic, range(50))
            await until(lambda: _is(relay.relayed == 50))
            await asyncio.to_thread(broker.stop)
            second = await add(database, topic, range(50, 150))

            async def not_ready() -> bool:
                code, body = await asyncio.to_thread(readyz, relay)
                return code == 503 and body["broker_ok"] is False

            await until(not_ready, timeout=30)
            assert (await status(conn)).pending == 100
            await asyncio.to_thread(broker.start)
            await until(lambda: _pending_is(conn, 0), timeout=90)
            await until(lambda: _ready(relay), timeout=30)
    finally:
        await conn.close()
    seen = {dict(r.headers)["ce_id"].decode() for r in await read_to_end(kafka, topic)}
    assert seen == set(first + second)


async def test_a_database_outage_is_waited_out_and_nothing_is_lost(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """The relay's database connection is cut: it reports not ready and reconnects once healed; events added
    meanwhile are published, and the ones before were not published twice."""
    topic = await new_topic(partitions=2)
    proxy, through_proxy = await proxy_database(database)
    relay = Relay(relay_settings(kafka_settings, through_proxy, health_port=0))
    try:
        async with running(relay):
            first = await add(database, topic, range(20))
            await until(lambda: _is(relay.relayed == 20))
            await proxy.cut()

            async def not_ready() -> bool:
                code, body = await asyncio.to_thread(readyz, relay)
                return code == 503 and body["database_ok"] is False

            await until(not_ready, timeout=30)
            second = await add(database, topic, range(20, 60))
            await proxy.heal()
            records = await read_topic(topic, 60, timeout_ms=60_000)
            await until(lambda: _is(relay.relayed == 60))
            await until(lambda: _ready(relay), timeout=30)
    finally:
        await proxy.cut()
    ids = [dict(r.headers)["ce_id"].decode() for r in records]
    assert sorted(ids) == sorted(first + second)  # each once: the cut came after the first were deleted


async def _ready(relay: Relay) -> bool:
    return (await asyncio.to_thread(readyz, relay))[0] == 200


async def _is(value: bool) -> bool:
    return value


async def _pending_is(conn: asyncpg.Connection, count: int) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM eventq_outbox") == count)
