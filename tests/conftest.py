"""Shared fixtures: the real broker and database of the dev stack (`eventq dev up`).

Tests marked ``kafka`` or ``postgres`` FAIL (never skip) when the service is not
reachable, so a CI run that could not start the stack cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventq.config import KafkaSettings
from eventq.kafka import create_topics
from eventq_dev.devstack import StackSettings, port_accepts
from eventq_dev.devstack.kafka import KafkaBroker, ensure_kafka_jars

# The dev stack's broker unless the environment names another one.
BOOTSTRAP = os.environ.get("EVENTQ_BOOTSTRAP_SERVERS") or StackSettings.from_env().bootstrap_servers


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    """Settings for the dev stack's broker; fails the test if it is down."""
    host, _, port = BOOTSTRAP.split(",")[0].rpartition(":")
    if not port_accepts(int(port), host, timeout=2):
        pytest.fail(f"Kafka is not reachable at {BOOTSTRAP}: run `eventq dev up` (or `make up`) first")
    return KafkaSettings(bootstrap_servers=BOOTSTRAP, client_id="eventq-tests")


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[int]:
    """The partition ids of a topic, from the broker's metadata."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in description["partitions"])
    finally:
        await admin.close()


async def end_offsets(kafka: KafkaSettings, topic: str, *, nonempty: bool = False) -> dict[int, int]:
    """Each partition's end offset (only partitions holding records, if ``nonempty``)."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(kafka, topic)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items() if offset > 0 or not nonempty}
    finally:
        await consumer.stop()


async def read_to_end(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic a ``read_committed`` reader sees (aborted transactions hidden),
    up to each partition's end when the read began; TimeoutError if that takes longer."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(kafka, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end took more than {timeout:.0f} s")
            for part in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:  # all bound at once, so the ports differ
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def kafka_lib() -> Path:
    """The jars the dev stack itself uses (fetched once with mvn if missing)."""
    return ensure_kafka_jars(StackSettings.from_env())


@pytest.fixture
async def broker(tmp_path: Path, kafka_lib: Path) -> AsyncIterator[KafkaBroker]:
    """A broker of the test's own (not started yet), on free ports; stopped afterwards."""
    port, controller_port = free_ports(2)
    broker = KafkaBroker(
        home=tmp_path / "kafka",
        port=port,
        controller_port=controller_port,
        lib=kafka_lib,
    )
    yield broker
    await asyncio.to_thread(broker.stop)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(kafka_settings: KafkaSettings) -> TopicFactory:
    """Create a fresh, uniquely named topic (6 partitions unless told otherwise)."""

    async def make(partitions: int = 6, config: dict[str, str] | None = None) -> str:
        name = f"test.{uuid.uuid4().hex[:12]}"
        await create_topics(kafka_settings, [name], partitions=partitions, config=config)
        return name

    return make


Reader = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


@pytest.fixture
async def read_topic(kafka_settings: KafkaSettings) -> AsyncIterator[Reader]:
    """Read every record of a topic from the beginning with a plain aiokafka consumer."""
    consumers: list[AIOKafkaConsumer] = []

    async def read(topic: str, expected: int, timeout_ms: int = 15000) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(**kafka_settings.client_kwargs(), enable_auto_commit=False)
        consumers.append(consumer)
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in await partitions_of(kafka_settings, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        waited = 0
        while len(records) < expected and waited < timeout_ms:
            batch = await consumer.getmany(timeout_ms=250)
            waited += 250
            for part in batch.values():
                records.extend(part)
        # One more short poll proves nothing beyond `expected` arrived.
        for part in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(part)
        return records

    yield read
    for consumer in consumers:
        await consumer.stop()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """URL of a fresh, migrated database of the test's own on the dev stack's PostgreSQL (dropped after)."""
    import asyncpg

    from eventq.database import DatabaseSettings

    base = DatabaseSettings.from_env().url
    try:
        admin = await asyncpg.connect(base, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {base} ({exc}): run `eventq dev up` (or `make up`) first")
    name = f"eventq_test_{uuid.uuid4().hex[:10]}"
    url = await create_database(admin, base, name)
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def create_database(admin: Any, base_url: str, name: str) -> str:
    """Create database ``name`` next to ``base_url`` (through the ``admin`` connection), apply
    eventq's migrations to it, and return its URL."""
    import asyncpg

    from eventq.migrations import migrate

    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base_url.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url
