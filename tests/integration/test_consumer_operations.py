"""The daemon in operation: retry topics, outages of its dead-letter topic and database, health, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from structlog.testing import capture_logs

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context
from eventq.kafka import create_topics
from eventq.schemas import Event
from eventq.schemas.envelope import encode
from eventq_dev.devstack.kafka import KafkaBroker
from tests.conftest import Reader, TopicFactory
from tests.integration.consumer_kit import committed, consumer_settings, order, publish, rows, run_until_idle
from tests.integration.tcp_proxy import proxy_database

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER = "demo.order.created.v1"
T = TypeVar("T")


async def wait_for(predicate: Callable[[], Awaitable[T | None]], timeout: float = 30.0, every: float = 0.2) -> T:
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(every)
    return result


async def test_retry_topics_let_later_events_pass_and_dead_letter_as_the_source_record(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """With retry_topics=True a failing event moves to <topic>.retry.N; later events of its partition go first."""
    topic = await new_topic(partitions=1)
    flaky, doomed = order(0, key="k"), order(1, key="k")
    later = [order(n, key="k") for n in range(2, 6)]
    await publish(kafka_settings, topic, [flaky, doomed, *later])
    app = App("t", topics=[topic])
    handled: list[str] = []
    attempts: Counter[str] = Counter()

    @app.handler(ORDER, retry_topics=True, max_attempts=3)
    async def handle(event: Event, ctx: Context) -> None:
        attempts[event.id] += 1
        assert ctx.attempt == attempts[event.id]
        if event.id == doomed.id or (event.id == flaky.id and ctx.attempt < 3):
            raise RuntimeError(f"failed attempt {ctx.attempt}")
        handled.append(event.id)

    settings = consumer_settings(kafka_settings, database, topic, backoff_initial_s=0.3, backoff_max_s=1.0)
    await run_until_idle(app, settings)

    assert handled == [*[e.id for e in later], flaky.id]  # the flaky event did not hold its partition
    assert attempts == Counter({flaky.id: 3, doomed.id: 3, **{e.id: 1 for e in later}})
    assert len(await read_topic(f"{topic}.retry.1", 2)) == 2 and len(await read_topic(f"{topic}.retry.2", 2)) == 2
    [letter] = await read_topic(f"{topic}.dlt", 1)
    headers = dict(letter.headers)
    assert (headers["eventq-dlt-topic"], headers["eventq-dlt-offset"]) == (topic.encode(), b"1")
    assert (headers["eventq-dlt-attempts"], headers["eventq-dlt-reason"]) == (b"3", b"exhausted")
    assert not any(name.startswith("eventq-retry-") for name in headers)
    recorded = await rows(database, settings.group_id or "")
    outcomes = {r["event_id"]: (r["topic"], r["offset"], r["outcome"]) for r in recorded}
    assert outcomes[flaky.id] == (topic, 0, "handled") and outcomes[doomed.id] == (topic, 1, "dead_lettered")
    assert (await committed(kafka_settings, settings.group_id or "", topic)) == {0: 6}


async def test_a_failing_dead_letter_publish_holds_the_commit_until_it_succeeds(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """While the dead-letter topic is missing the offset stays before the poison record, but the handled events
    of its slice are recorded at once (a new owner would skip them); once the topic exists all goes on."""
    from aiokafka import AIOKafkaProducer

    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])
    first = order(0, key="k")
    gate = asyncio.Event()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        if event.id == first.id:
            await gate.wait()  # holds the partition, so what follows arrives as one slice

    settings = consumer_settings(kafka_settings, database, topic, dead_letter_timeout_s=1.0)
    daemon = Consumer(app, settings)
    running = asyncio.create_task(daemon.run())
    await wait_for(lambda: _exists(kafka_settings, f"{topic}.dlt"))
    admin = AIOKafkaAdminClient(**kafka_settings.client_kwargs())
    await admin.start()
    await publish(kafka_settings, topic, [first])
    await admin.delete_topics([f"{topic}.dlt"])
    await wait_for(lambda: _gone(kafka_settings, f"{topic}.dlt"))
    after = [order(n, key="k") for n in range(1, 4)]
    # The poison record and the events after it in one record batch, so they are fetched as one slice.
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs(), linger_ms=500)
    await raw.start()
    sent = [await raw.send(topic, b"poison", key=b"k")]
    for event in after:
        encoded = encode(event)
        sent.append(await raw.send(topic, encoded.value, key=encoded.key, headers=encoded.headers))
    await asyncio.gather(*sent)
    await raw.stop()
    with capture_logs() as logs:
        gate.set()
        await asyncio.sleep(5)
        held = await committed(kafka_settings, settings.group_id or "", topic)
        recorded_while_held = {row["event_id"] for row in await rows(database, settings.group_id or "")}
        await create_topics(kafka_settings, [f"{topic}.dlt"], partitions=1)
        await wait_for(lambda: _committed_is(kafka_settings, settings.group_id or "", topic, {0: 5}), timeout=60)
    daemon.stop()
    await running
    await admin.close()

    assert held.get(0, 0) <= 1  # never past the poison record at offset 1
    assert recorded_while_held == {first.id, *(e.id for e in after)}
    [letter] = await read_topic(f"{topic}.dlt", 1)
    assert letter.value == b"poison"
    events = [entry["event"] for entry in logs]
    assert events.count("broker.unavailable") == 1 and events.count("broker.recovered") == 1


async def test_a_database_outage_pauses_the_daemon_which_resumes_without_loss(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """PostgreSQL unreachable for 3 s mid-stream: one log line each way, then every event recorded exactly once."""
    topic = await new_topic(partitions=3)
    proxy, proxied = await proxy_database(database)
    events = [order(n, key=f"c{n}") for n in range(600)]
    app = App("t", topics=[topic])
    handled: Counter[str] = Counter()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        handled[event.id] += 1
        await asyncio.sleep(0.002)

    settings = consumer_settings(kafka_settings, proxied, topic, max_batch_size=50)
    daemon = Consumer(app, settings)
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        await publish(kafka_settings, topic, events)
        await wait_for(lambda: _at_least(handled, 100))
        await proxy.cut()
        await asyncio.sleep(3)
        ready_during_outage = daemon.status.ready
        await proxy.heal()
        await wait_for(lambda: _row_count_is(database, settings.group_id or "", len(events)), timeout=60)
        daemon.stop()
        await running
    await proxy.cut()

    assert not ready_during_outage
    recorded = Counter(r["event_id"] for r in await rows(database, settings.group_id or ""))
    assert recorded == Counter({e.id: 1 for e in events})
    assert set(handled) == {e.id for e in events}
    names = [entry["event"] for entry in logs]
    assert names.count("database.unavailable") == 1 and names.count("database.recovered") == 1


async def test_health_endpoint_reports_live_and_ready_and_not_ready_while_the_database_is_away(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """/livez is 200 while the loop runs; /readyz 200 once assigned, 503 while PostgreSQL is unreachable, 200 after."""
    topic = await new_topic(partitions=2)
    proxy, proxied = await proxy_database(database)
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    daemon = Consumer(app, consumer_settings(kafka_settings, proxied, topic, health_port=0))
    running = asyncio.create_task(daemon.run())
    await wait_for(lambda: _has_health(daemon))
    assert daemon.health is not None
    port = daemon.health.port
    live = await _get(port, "/livez")
    ready = await wait_for(lambda: _ready(port))
    await proxy.cut()
    away = await _get(port, "/readyz")
    await proxy.heal()
    back = await wait_for(lambda: _ready(port))
    daemon.stop()
    await running
    await proxy.cut()

    assert live.startswith("HTTP/1.1 200")
    assert '"assigned_partitions":2' in ready
    assert away.startswith("HTTP/1.1 503") and '"database_ok":false' in away
    assert '"database_ok":true' in back


async def test_eventq_consume_runs_until_idle_and_stops_cleanly_on_sigterm(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """`eventq consume --until-idle` exits 0 once caught up; SIGTERM mid-stream exits 0, committing what it handled."""
    topic = await new_topic(partitions=2)
    await publish(kafka_settings, topic, [order(n) for n in range(400)])
    env = {
        **os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "EVENTQ_DATABASE_URL": database,
        "EVENTQ_TOPICS": topic, "EVENTQ_SESSION_TIMEOUT_S": "6",
    }
    eventq = [sys.executable, "-m", "eventq.cli"]
    burst = await asyncio.create_subprocess_exec(
        *eventq, "consume", "tests.integration.sample_app:app", "--group", "cli-burst", "--until-idle",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(burst.communicate(), 90)
    assert burst.returncode == 0, err.decode()[-3000:]
    assert len(await rows(database, "cli-burst")) == 400

    slow = {**env, "SAMPLE_HANDLER_SLEEP_S": "0.02"}
    daemon = await asyncio.create_subprocess_exec(
        *eventq, "consume", "tests.integration.sample_app:app", "--group", "cli-term",
        env=slow, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    await wait_for(lambda: _row_count_at_least(database, "cli-term", 20), timeout=60)
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(daemon.communicate(), 60)
    assert daemon.returncode == 0, err.decode()[-3000:]
    assert time.monotonic() - started < 30
    assert b"consumer.stopped" in err
    handled = len(await rows(database, "cli-term"))
    assert sum((await committed(kafka_settings, "cli-term", topic)).values()) == handled < 400


async def test_eventq_consume_reports_an_unreachable_broker_and_database(database: str) -> None:
    """Unreachable services make `eventq consume` exit 1 with one line saying what to start or fix."""
    env = {**os.environ, "EVENTQ_TOPICS": "whatever"}
    cases = [
        (["--bootstrap-servers", "127.0.0.1:1", "--database-url", database], "cannot reach a Kafka broker"),
        (["--database-url", "postgresql://postgres@127.0.0.1:1/x"], "cannot use the database"),
    ]
    for args, expected in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eventq.cli", "consume", "tests.integration.sample_app:app", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 1, err.decode()[-2000:]
        assert expected in err.decode()


async def _exists(kafka: KafkaSettings, topic: str) -> bool:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def _gone(kafka: KafkaSettings, topic: str) -> bool:
    return not await _exists(kafka, topic)


async def _committed_is(kafka: KafkaSettings, group: str, topic: str, expected: dict[int, int]) -> bool:
    return await committed(kafka, group, topic) == expected


async def _at_least(counter: Counter[str], n: int) -> bool:
    return len(counter) >= n


async def _row_count_is(database: str, group: str, n: int) -> bool:
    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
        return count == n
    finally:
        await conn.close()


async def _row_count_at_least(database: str, group: str, n: int) -> bool:
    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
        return count >= n
    finally:
        await conn.close()


async def _has_health(daemon: Consumer) -> bool:
    return daemon.health is not None and daemon.health.port != 0


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    return response


async def _ready(port: int) -> str | None:
    response = await _get(port, "/readyz")
    return response if response.startswith("HTTP/1.1 200") else None


@pytest.mark.slow
async def test_a_broker_outage_pauses_the_daemon_which_resumes_without_loss(
    broker: KafkaBroker, database: str
) -> None:
    """Its broker stopped mid-stream: the daemon reports not ready, carries on after the restart, one row per event."""
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}")
    topic = "outage.orders"
    await create_topics(kafka, [topic], partitions=3)
    first, second = [order(n) for n in range(300)], [order(n) for n in range(300, 600)]
    await publish(kafka, topic, first)
    app = App("t", topics=[topic])
    handled: Counter[str] = Counter()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        handled[event.id] += 1

    settings = consumer_settings(kafka, database, topic, health_port=0)
    daemon = Consumer(app, settings)
    running = asyncio.create_task(daemon.run())
    await wait_for(lambda: _row_count_is(database, settings.group_id or "", 300), timeout=60)
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(3)
    assert not running.done()  # the daemon does not die with its broker
    assert daemon.health is not None
    away = await _get(daemon.health.port, "/readyz")
    assert away.startswith("HTTP/1.1 503") and '"broker_ok":false' in away  # and says it is not ready
    await asyncio.to_thread(broker.start)
    await publish(kafka, topic, second)
    await wait_for(lambda: _row_count_is(database, settings.group_id or "", 600), timeout=90)
    await wait_for(lambda: _committed_total_is(kafka, settings.group_id or "", topic, 600), timeout=60)
    daemon.stop()
    await running

    recorded = Counter(r["event_id"] for r in await rows(database, settings.group_id or ""))
    assert recorded == Counter({e.id: 1 for e in first + second})
    assert set(handled) == {e.id for e in first + second}


async def _committed_total_is(kafka: KafkaSettings, group: str, topic: str, total: int) -> bool:
    return sum((await committed(kafka, group, topic)).values()) == total
