"""Readiness tells the truth: /readyz turns 503 within seconds of PostgreSQL or Kafka no longer answering
(stopped with SIGSTOP, so connections stay open and nothing is refused), idle or busy, and 200 after; one
outage is one unavailable and one recovered log line.

Each test pauses services of its own (a PostgreSQL cluster, a Kafka broker), never the dev stack's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs
from structlog.typing import EventDict

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context
from eventq.kafka import create_topics
from eventq.schemas import Event
from eventq_dev.devstack.kafka import KafkaBroker
from eventq_dev.devstack.postgres import PostgresCluster, cluster_home
from tests.conftest import TopicFactory, create_database, free_ports
from tests.integration.consumer_kit import consumer_settings, order, publish

ORDER = "demo.order.created.v1"
TURNS_503_WITHIN_S = 10.0  # the probe asks every second and waits 2 s: about 3 s, with room for a slow machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this module's own (the tests stop its processes)."""
    stack_dir = tmp_path_factory.mktemp("readiness") / "stack"
    cluster = PostgresCluster(home=cluster_home(stack_dir), port=free_ports(1)[0])
    cluster.start()
    try:
        yield cluster
    finally:
        resume(paused_pids(cluster))  # whatever a failed test left stopped
        cluster.stop()
        if not cluster.home.is_relative_to(stack_dir):  # the /tmp fallback, which tmp_path does not clean
            shutil.rmtree(cluster.home, ignore_errors=True)


@pytest.fixture
async def own_database(cluster: PostgresCluster) -> AsyncIterator[str]:
    """URL of a fresh, migrated database on the module's own cluster."""
    admin = await asyncpg.connect(cluster.dsn)
    try:
        yield await create_database(admin, cluster.dsn, f"readiness_{os.urandom(5).hex()}")
    finally:
        await admin.close()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent pid
                found.append(int(entry.name))
    return found


def paused_pids(cluster: PostgresCluster) -> list[int]:
    main = cluster.pid()
    return [] if main is None else [main, *children(main)]


def resume(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def postgres_stopped(cluster: PostgresCluster) -> Iterator[None]:
    """SIGSTOP the postmaster, then each backend until no new one appears; SIGCONT them all on leaving."""
    main = cluster.pid()
    assert main is not None
    stopped: list[int] = []
    try:
        os.kill(main, signal.SIGSTOP)  # first, so that it forks no backend that escapes the pause
        stopped.append(main)
        while new := [pid for pid in children(main) if pid not in stopped]:
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped += new
        yield
    finally:
        resume(stopped)


@contextlib.contextmanager
def broker_stopped(broker: KafkaBroker) -> Iterator[None]:
    pid = broker.pid()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def readyz(port: int) -> tuple[int, str]:
    """(status, body) of GET /readyz; the server must answer within 5 s, outage or not."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            response = (await reader.read()).decode()
        finally:
            writer.close()
    return int(response.split(" ", 2)[1]), response.partition("\r\n\r\n")[2]


async def wait_for_readyz(port: int, code: int, timeout: float) -> str:
    """The body of the first /readyz answer with ``code``, asking every 0.2 s for at most ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            got, body = await readyz(port)
            if got == code:
                return body
            await asyncio.sleep(0.2)


async def started(daemon: Consumer) -> int:
    """The health port, once the daemon serves it."""
    async with asyncio.timeout(30):
        while daemon.health is None or daemon.health.port == 0:
            await asyncio.sleep(0.1)
    return daemon.health.port


def count(logs: list[EventDict], name: str) -> int:
    return sum(1 for entry in logs if entry["event"] == name)


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
async def test_readyz_turns_503_when_postgres_stops_answering_while_idle_and_200_after(
    kafka_settings: KafkaSettings, cluster: PostgresCluster, own_database: str, new_topic: TopicFactory
) -> None:
    """An idle daemon's /readyz is 503 within seconds of PostgreSQL being stopped, 200 once it resumes,
    with database.unavailable and database.recovered logged once each."""
    topic = await new_topic(partitions=2)
    app = App("readiness", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    daemon = Consumer(app, consumer_settings(kafka_settings, own_database, topic, health_port=0))
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        try:
            port = await started(daemon)
            await wait_for_readyz(port, 200, 30)
            with postgres_stopped(cluster):
                away = await wait_for_readyz(port, 503, TURNS_503_WITHIN_S)
                await asyncio.sleep(3)  # a longer outage is still one outage
                still_away, _ = await readyz(port)
            back = await wait_for_readyz(port, 200, 30)
        finally:
            daemon.stop()
            await running

    assert '"database_ok":false' in away and still_away == 503
    assert '"database_ok":true' in back
    assert (count(logs, "database.unavailable"), count(logs, "database.recovered")) == (1, 1)


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
async def test_readyz_turns_503_when_postgres_stops_answering_while_the_pool_is_busy(
    kafka_settings: KafkaSettings, cluster: PostgresCluster, own_database: str, new_topic: TopicFactory
) -> None:
    """With events flowing and every pooled connection held by a handler waiting on the stopped database,
    /readyz is still 503 within seconds and 200 after; one outage, one line each way, no event lost or doubled."""
    topic = await new_topic(partitions=4)
    events = [order(n, key=f"k{n}") for n in range(400)]
    app = App("readiness", topics=[topic])
    handled: Counter[str] = Counter()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        await ctx.db.fetchval("SELECT pg_sleep(0.02)")
        handled[event.id] += 1

    settings = consumer_settings(
        kafka_settings, own_database, topic, health_port=0, pool_size=2, ordering="key", max_batch_size=50
    )
    daemon = Consumer(app, settings)
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        try:
            port = await started(daemon)
            await publish(kafka_settings, topic, events)
            async with asyncio.timeout(60):
                while len(handled) < 40:
                    await asyncio.sleep(0.05)
            with postgres_stopped(cluster):
                in_flight = len(handled)
                away = await wait_for_readyz(port, 503, TURNS_503_WITHIN_S)
                stalled = len(handled) - in_flight  # (handlers that were past their query when it stopped)
            await wait_for_readyz(port, 200, 30)
            async with asyncio.timeout(90):
                while await _rows(own_database, settings.group_id or "") < len(events):
                    await asyncio.sleep(0.2)
        finally:
            daemon.stop()
            await running

    assert '"database_ok":false' in away
    assert stalled < 10  # the pool really was stuck, not idle
    assert set(handled) == {e.id for e in events}
    assert (count(logs, "database.unavailable"), count(logs, "database.recovered")) == (1, 1)


async def _rows(database: str, group: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group))
    finally:
        await conn.close()


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
async def test_readyz_turns_503_when_the_broker_stops_answering_and_200_after(
    broker: KafkaBroker, database: str
) -> None:
    """/readyz is 503 within seconds of its broker being stopped and 200 once it resumes (and the group has
    the daemon back), with broker.unavailable and broker.recovered logged once each."""
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}")
    topic = "readiness.orders"
    await create_topics(kafka, [topic], partitions=2)
    app = App("readiness", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    daemon = Consumer(app, consumer_settings(kafka, database, topic, health_port=0))
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        try:
            port = await started(daemon)
            await wait_for_readyz(port, 200, 60)
            with broker_stopped(broker):
                away = await wait_for_readyz(port, 503, TURNS_503_WITHIN_S)
            back = await wait_for_readyz(port, 200, 90)
        finally:
            daemon.stop()
            await running

    assert '"broker_ok":false' in away
    assert '"broker_ok":true' in back
    assert (count(logs, "broker.unavailable"), count(logs, "broker.recovered")) == (1, 1)
