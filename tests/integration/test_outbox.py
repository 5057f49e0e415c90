"""The transactional outbox against the real PostgreSQL and Kafka: adding, relaying, ordering, failures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from structlog.testing import capture_logs

from eventq.config import KafkaSettings
from eventq.database import DatabaseSettings
from eventq.errors import ConfigError, EventTooLarge, SchemaViolation
from eventq.kafka import create_topics
from eventq.outbox import Outbox, Relay, RelaySettings, status
from eventq.outbox.rows import SHARES
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from eventq.telemetry import Telemetry
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader, TopicFactory
from tests.integration.consumer_kit import order

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def relay_settings(kafka: KafkaSettings, database: str, **overrides: Any) -> RelaySettings:
    """Fast settings for tests: short back-off, a quick poll."""
    base = RelaySettings(
        kafka=kafka, database=DatabaseSettings(url=database), poll_interval_s=0.2, backoff_initial_s=0.1,
        backoff_max_s=0.5, producer=ProducerSettings(delivery_timeout_s=5.0),
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def outbox() -> Outbox:
    return Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    await connection.execute("CREATE TABLE orders (order_id text PRIMARY KEY)")
    yield connection
    await connection.close()


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Relay]:
    """A relay running in the background for the block, stopped after."""
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


async def pending(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM eventq_outbox WHERE parked_at IS NULL"))


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
        if metric.name == name for point in metric.data.data_points
    ]


def metric_sum(reader: InMemoryMetricReader, name: str) -> float:
    return sum(getattr(p, "value", 0) for p in metric_points(reader, name))


def ids_of(records: list[Any]) -> list[str]:
    return [dict(r.headers)["ce_id"].decode() for r in records]


async def test_committed_events_are_published_once_and_rolled_back_ones_never(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Of 40 transactions, the 20 that commit each publish their events exactly once; the 20 rolled back, none."""
    topic = await new_topic(partitions=3)
    committed: list[str] = []
    rolled_back: list[str] = []
    for n in range(40):
        events = [order(n * 10 + i) for i in range(1 + n % 3)]
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES ($1)", f"o-{n}")
                if n % 2:
                    await outbox.add_many(conn, events, topic=topic)
                else:
                    await outbox.add(conn, events[0], topic=topic)
                    events = events[:1]
                if n % 4 in (2, 3):
                    rolled_back.extend(e.id for e in events)
                    raise RuntimeError("the caller changed its mind")
                committed.extend(e.id for e in events)
    relay = Relay(relay_settings(kafka_settings, database))
    await relay.run(until_empty=True)
    records = await read_topic(topic, len(committed))
    assert sorted(ids_of(records)) == sorted(committed)
    assert not set(ids_of(records)) & set(rolled_back)
    assert relay.relayed == len(committed)
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 0


async def test_a_published_outbox_event_is_the_record_publish_would_have_sent(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Key, payload, timestamp and every CloudEvents header survive the outbox unchanged."""
    topic = await new_topic(partitions=1)
    event = order(7, subject="orders/7", causation_id="cause-1", correlation_id="flow-1")
    async with conn.transaction():
        await outbox.add(conn, event, topic=topic)
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    (record,) = await read_topic(topic, 1)
    headers = {name: value.decode() for name, value in record.headers}
    assert record.key == b"customer-7"
    assert orjson.loads(record.value) == event.data
    assert record.timestamp == round(event.time.timestamp() * 1000)
    assert headers == {
        **headers,
        "ce_id": event.id, "ce_type": event.type, "ce_source": "tests", "ce_specversion": "1.0",
        "ce_subject": "orders/7", "ce_causationid": "cause-1", "ce_correlationid": "flow-1",
        "content-type": "application/json",
    }


async def test_an_invalid_event_fails_the_callers_transaction_and_adds_nothing(
    outbox: Outbox, conn: asyncpg.Connection
) -> None:
    """A payload failing its schema, or too large, raises in the caller: its own row and the events roll back."""
    bad = Event(type="demo.order.created.v1", source="tests", data={"order_id": "o-1"})
    huge = order(1, subject="x" * 1_100_000)
    for invalid, error in ((bad, SchemaViolation), (huge, EventTooLarge)):
        with pytest.raises(error):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES ('o-1')")
                await outbox.add_many(conn, [order(2), invalid], topic="orders")
    assert await conn.fetchval("SELECT count(*) FROM orders") == 0
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 0


async def test_adding_outside_a_transaction_or_to_a_bad_topic_is_refused(
    outbox: Outbox, conn: asyncpg.Connection
) -> None:
    """Without an open transaction the outbox refuses (it would be a dual write); a topic Kafka cannot have too."""
    with pytest.raises(ValueError, match="inside your transaction"):
        await outbox.add(conn, order(1), topic="orders")
    async with conn.transaction():
        for topic in ("bad topic", "x" * 250, "a/b"):
            with pytest.raises(ConfigError, match="not a Kafka topic name"):
                await outbox.add(conn, order(1), topic=topic)
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 0


async def test_events_of_one_key_are_published_in_commit_order_when_transactions_overlap(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader, outbox: Outbox,
) -> None:
    """T1 adds e1, T2 adds e2 for the same key and must wait; T1 adds e3 and commits first: e1, e3, e2 is published."""
    topic = await new_topic(partitions=1)
    t1, t2, watcher = [await asyncpg.connect(database) for _ in range(3)]
    e1, e2, e3 = (order(n, key="customer-same") for n in (1, 2, 3))
    commits: list[str] = []
    try:
        tx1 = t1.transaction()
        await tx1.start()
        await outbox.add(t1, e1, topic=topic)

        async def second() -> None:
            async with t2.transaction():
                await outbox.add(t2, e2, topic=topic)
            commits.append("T2")

        racing = asyncio.create_task(second())

        async def t2_waits_or_is_done() -> bool:
            if racing.done():
                return True
            lock = await watcher.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", t2.get_server_pid()
            )
            return bool(lock == "Lock")

        await wait_for(t2_waits_or_is_done)
        await outbox.add(t1, e3, topic=topic)
        await tx1.commit()
        commits.append("T1")
        await racing
    finally:
        for c in (t1, t2, watcher):
            await c.close()
    assert commits == ["T1", "T2"]  # T2 waited for T1's key lock
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    records = await read_topic(topic, 3)
    assert ids_of(records) == [e1.id, e3.id, e2.id]


async def test_many_concurrent_writers_keep_each_keys_commit_order(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader, outbox: Outbox,
) -> None:
    """12 writers commit 240 transactions over 4 keys while a relay runs: each key's events arrive in commit order."""
    topic = await new_topic(partitions=4)
    sequence: dict[str, list[str]] = {f"k{k}": [] for k in range(4)}
    conns = [await asyncpg.connect(database) for _ in range(12)]

    async def writer(c: asyncpg.Connection, w: int) -> None:
        for n in range(20):
            key = f"k{(w + n) % 4}"
            async with c.transaction():
                event = order(w * 100 + n, key=key)
                await outbox.add(c, event, topic=topic)
                await asyncio.sleep(0.001 * (n % 3))  # hold the key a little, so writers collide
                # Under the key's lock until commit: the order of these appends is the commit order.
                sequence[key].append(event.id)

    try:
        async with running(Relay(relay_settings(kafka_settings, database, batch_size=7))):
            await asyncio.gather(*(writer(c, w) for w, c in enumerate(conns)))
            records = await read_topic(topic, 240)
    finally:
        for c in conns:
            await c.close()
    by_key: dict[str, list[str]] = {}
    for record in records:
        by_key.setdefault(record.key.decode(), []).append(dict(record.headers)["ce_id"].decode())
    assert by_key == sequence


async def test_a_notify_wakes_the_relay_long_before_its_poll(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """With a 120 s poll, a committed event still reaches the topic: the commit's NOTIFY woke the relay."""
    topic = await new_topic(partitions=1)
    async with running(Relay(relay_settings(kafka_settings, database, poll_interval_s=120))):
        await asyncio.sleep(1.5)  # the relay has read its empty first round and waits
        async with conn.transaction():
            await outbox.add(conn, order(1), topic=topic)
        records = await read_topic(topic, 1, timeout_ms=20_000)
    assert len(records) == 1


async def test_a_row_whose_notify_was_missed_is_found_by_the_poll(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """A row written without a NOTIFY (as if the relay was reconnecting) is published by the polling fallback."""
    topic = await new_topic(partitions=1)
    row = outbox.row(order(1), topic=topic)
    async with running(Relay(relay_settings(kafka_settings, database, poll_interval_s=0.5))):
        await asyncio.sleep(1.0)
        await conn.execute(
            "INSERT INTO eventq_outbox (topic, share, event_id, event_type, key, value, timestamp_ms, source, "
            '"time", correlation_id, headers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)',
            row.topic, row.share, row.event_id, row.event_type, row.key, row.value, row.timestamp_ms, row.source,
            row.time, row.correlation_id, row.headers,
        )
        records = await read_topic(topic, 1)
    assert ids_of(records) == [row.event_id]


async def test_a_missing_topic_keeps_its_rows_and_is_reported_while_other_topics_go_on(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Rows for a topic that does not exist stay pending with the error in status; another topic's are published;
    once the topic is created, they are published too."""
    good = await new_topic(partitions=1)
    missing = f"{good}.missing"
    async with conn.transaction():
        stuck_ids = [a.event_id for a in await outbox.add_many(conn, [order(1), order(2)], topic=missing)]
        await outbox.add(conn, order(3), topic=good)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with capture_logs() as logs:
        await _missing_topic_goes_on(kafka_settings, database, read_topic, outbox, conn, good, missing,
                                     Telemetry(meter_provider=meters))
    failed = [line for line in logs if line["event"] == "outbox.send_failed" and line["topic"] == missing]
    assert failed and failed[0]["event_ids"] == stuck_ids and failed[0]["error_type"] == "TopicNotFound"
    failures = [p for p in metric_points(reader, "eventq.outbox.relay_failed")]
    assert failures and {p.attributes["error.type"] for p in failures} == {"TopicNotFound"}
    assert sum(p.value for p in failures) == 2 * len(failed)  # both stuck events, each failed send
    meters.shutdown()
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 0


async def _missing_topic_goes_on(
    kafka_settings: KafkaSettings, database: str, read_topic: Reader, outbox: Outbox, conn: asyncpg.Connection,
    good: str, missing: str, telemetry: Telemetry,
) -> None:
    async with running(Relay(relay_settings(kafka_settings, database), telemetry=telemetry)):
        assert len(await read_topic(good, 1)) == 1

        async def reported() -> bool:
            found = {t.topic: t for t in (await status(conn)).topics}
            return found[missing].last_error is not None

        await wait_for(reported)
        stuck = {t.topic: t for t in (await status(conn)).topics}[missing]
        assert stuck.pending == 2 and stuck.parked == 0 and "TopicNotFound" in (stuck.last_error or "")
        async with conn.transaction():
            await outbox.add(conn, order(4), topic=good)
        assert len(await read_topic(good, 2)) == 2  # the good topic goes on while the other backs off
        await create_topics(kafka_settings, [missing], partitions=1)
        assert len(await read_topic(missing, 2)) == 2


async def test_an_event_too_large_for_its_topic_is_parked_reported_and_skipped_until_unparked(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """On a topic capped at 3 kB, a 10 kB event is parked with its error while smaller ones (sent in the same
    batch, then alone) are published; after raising the cap, unparking publishes it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    topic = await new_topic(partitions=1, config={"max.message.bytes": "3000"})
    big = order(2, subject="s" * 10_000)
    small = [order(1), order(3)]
    async with conn.transaction():
        await outbox.add_many(conn, [small[0], big, small[1]], topic=topic)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    relay = Relay(relay_settings(kafka_settings, database), telemetry=Telemetry(meter_provider=meters))
    await relay.run(until_empty=True)
    assert (metric_sum(reader, "eventq.outbox.parked"), metric_sum(reader, "eventq.outbox.relayed")) == (1, 2)
    meters.shutdown()
    assert sorted(ids_of(await read_topic(topic, 2))) == sorted(e.id for e in small)
    parked = await conn.fetch("SELECT event_id, last_error, attempts FROM eventq_outbox WHERE parked_at IS NOT NULL")
    assert [(r["event_id"], r["attempts"]) for r in parked] == [(big.id, 1)]
    assert "MessageTooLarge" in parked[0]["last_error"]
    (state,) = (await status(conn)).topics
    assert (state.pending, state.parked) == (0, 1)

    admin = AIOKafkaAdminClient(**kafka_settings.client_kwargs())
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "100000"})])
    finally:
        await admin.close()
    await conn.execute("UPDATE eventq_outbox SET parked_at = NULL")  # what `eventq outbox unpark` does
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    assert big.id in ids_of(await read_topic(topic, 3))
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 0


async def test_rows_that_cannot_be_records_are_parked_and_the_rest_published(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Rows written by hand with headers that are not [name, value] pairs, or a topic Kafka cannot have, are
    parked as unreadable; the relay goes on and publishes the good row."""
    topic = await new_topic(partitions=1)
    good = outbox.row(order(1), topic=topic)
    insert = (
        "INSERT INTO eventq_outbox (topic, share, event_id, event_type, key, value, timestamp_ms, source, "
        '"time", correlation_id, headers) VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10)'
    )
    hostile = [
        (topic, '{"ce_id": "x"}'), (topic, "[[1, 2]]"), (topic, '[["a", "b", "c"]]'), (topic, '"text"'),
        ("bad topic!", None), ("", None),
    ]
    for n, (where, headers) in enumerate(hostile):
        await conn.execute(insert, where, f"hostile-{n}", "t", None, b"{}", 0, "s", "t", "c", headers)
    await conn.execute(
        insert, good.topic, good.event_id, good.event_type, good.key, good.value, good.timestamp_ms, good.source,
        good.time, good.correlation_id, good.headers,
    )
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    assert ids_of(await read_topic(topic, 1)) == [good.event_id]
    parked = await conn.fetch("SELECT event_id, last_error FROM eventq_outbox WHERE parked_at IS NOT NULL")
    assert sorted(r["event_id"] for r in parked) == sorted(f"hostile-{n}" for n in range(len(hostile)))
    assert all(r["last_error"].startswith("unreadable row") for r in parked)


async def test_two_relays_split_the_shares_and_one_takes_over_when_the_other_dies(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Two relays hold 8 shares each, never the same one; when one's connection dies, the other holds all 16
    within seconds and every event is published."""
    topic = await new_topic(partitions=4)
    first = Relay(relay_settings(kafka_settings, database))
    second = Relay(relay_settings(kafka_settings, database))
    async with running(first), running(second):

        async def split() -> bool:
            relays = (await status(conn)).relays
            return sorted(len(r.shares) for r in relays) == [8, 8]

        await wait_for(split)
        held = [set(r.shares) for r in (await status(conn)).relays]
        assert not held[0] & held[1] and held[0] | held[1] == set(range(SHARES))
        events = [order(n, key=f"k{n}") for n in range(100)]
        async with conn.transaction():
            await outbox.add_many(conn, events, topic=topic)
        assert len(await read_topic(topic, 100)) == 100
        assert first._conn is not None  # noqa: SLF001
        first.stop()
        first._conn.terminate()  # noqa: SLF001 - its connection dies as if the process had been killed

        async def taken_over() -> bool:
            relays = (await status(conn)).relays
            return [len(r.shares) for r in relays] == [16]

        await wait_for(taken_over, timeout=15)
        more = [order(n, key=f"k{n}") for n in range(100, 200)]
        async with conn.transaction():
            await outbox.add_many(conn, more, topic=topic)
        records = await read_topic(topic, 200)
    assert sorted(set(ids_of(records))) == sorted(e.id for e in events + more)


async def test_published_rows_can_be_kept_for_a_while_and_are_then_purged(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """With keep_published_s, published rows stay marked published (not sent again) until older than that."""
    topic = await new_topic(partitions=1)
    async with conn.transaction():
        await outbox.add_many(conn, [order(1), order(2)], topic=topic)
    settings = relay_settings(kafka_settings, database, keep_published_s=3600)
    await Relay(settings).run(until_empty=True)
    await Relay(settings).run(until_empty=True)  # a second run sends nothing again
    assert len(await read_topic(topic, 2)) == 2
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox WHERE published_at IS NOT NULL") == 2
    await conn.execute("UPDATE eventq_outbox SET published_at = now() - interval '2 hours' WHERE event_id = $1",
                       (await conn.fetchval("SELECT event_id FROM eventq_outbox ORDER BY id LIMIT 1")))
    await Relay(settings).run(until_empty=True)  # purges at start
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 1


async def test_the_relay_serves_health_and_metrics(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """/livez and /readyz answer 200 with the shares held; /metrics has the outbox's pending gauge and sent count."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    topic = await new_topic(partitions=1)
    registry = CollectorRegistry()
    meters = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    relay = Relay(relay_settings(kafka_settings, database, health_port=0),
                  telemetry=Telemetry(meter_provider=meters, prometheus_registry=registry))

    def get(path: str) -> tuple[int, str]:
        assert relay.health is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.health.port}{path}", timeout=5) as response:
            return response.status, response.read().decode()

    try:
        async with running(relay):
            async with conn.transaction():
                await outbox.add_many(conn, [order(1), order(2)], topic=topic)
            await wait_for(lambda: _async(relay.relayed == 2))
            await wait_for(lambda: _async(relay.health is not None and bool(relay.status.shares)))
            live = await asyncio.to_thread(get, "/livez")
            ready = await asyncio.to_thread(get, "/readyz")
            metrics = (await asyncio.to_thread(get, "/metrics"))[1]
    finally:
        meters.shutdown()
    assert live[0] == ready[0] == 200
    assert orjson.loads(ready[1])["shares"] == list(range(SHARES))
    assert "eventq_outbox_pending" in metrics and "eventq_outbox_oldest_age" in metrics
    relayed = [line for line in metrics.splitlines() if line.startswith("eventq_outbox_relayed_total{")]
    assert relayed and relayed[0].endswith(" 2.0"), relayed


async def _async(value: bool) -> bool:
    return value


async def test_hostile_but_valid_text_reaches_the_topic_unchanged(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
    outbox: Outbox, conn: asyncpg.Connection,
) -> None:
    """Quotes, SQL, JSON, backslashes, emoji and long keys in every attribute are data, never syntax: each event
    arrives byte for byte as added, through add and add_many."""
    topic = await new_topic(partitions=3)
    nasty = ["'; DROP TABLE eventq_outbox; --", '{"a": "\\u0000"}', "\\x00 \\\\ $1 %(topic)s :topic", "🦆" * 50,
             "k" * 5000, "ce_id", "\r\n\t"]
    events = [
        Event(type="demo.order.created.v1", source=f"src {text[:200]}", key=text, subject=text,
              causation_id=text[:300], correlation_id=text[:300],
              data={"order_id": text[:100] or "o", "customer_id": text, "amount_cents": n, "currency": "EUR"})
        for n, text in enumerate(nasty)
    ]
    async with conn.transaction():
        await outbox.add(conn, events[0], topic=topic)
        await outbox.add_many(conn, events[1:], topic=topic)
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    by_id = {dict(r.headers)["ce_id"].decode(): r for r in await read_topic(topic, len(events))}
    assert sorted(by_id) == sorted(e.id for e in events)
    for event in events:
        record = by_id[event.id]
        headers = {name: value.decode() for name, value in record.headers}
        assert record.key == (event.key or "").encode() and orjson.loads(record.value) == event.data
        assert (headers["ce_source"], headers["ce_subject"], headers["ce_causationid"]) == (
            event.source, event.subject, event.causation_id)
    assert await conn.fetchval("SELECT to_regclass('eventq_outbox')") is not None
