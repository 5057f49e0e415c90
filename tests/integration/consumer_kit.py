"""Helpers for consumer tests: settings for a fresh group, publishing, reading rows."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, ConsumerSettings, Instruments
from eventq.database import DatabaseSettings
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event
from eventq.telemetry import Telemetry
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS


def consumer_settings(kafka: KafkaSettings, database: str, topic: str, **overrides: Any) -> ConsumerSettings:
    """Fast settings for tests: a fresh group, quick exact back-off, short batch waits."""
    base = ConsumerSettings(
        kafka=kafka,
        database=DatabaseSettings(url=database),
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        topics=(topic,),
        schemas=DEMO_SCHEMAS,
        max_batch_timeout_s=0.2,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        backoff_jitter=0.0,
        session_timeout_s=6.0,
        shutdown_grace_s=5.0,
    )
    return dataclasses.replace(base, **overrides)


def order(n: int, key: str | None = None, **kwargs: Any) -> Event:
    """A valid demo.order.created.v1 event number ``n``."""
    return Event(
        type="demo.order.created.v1",
        source="tests",
        key=key if key is not None else f"customer-{n % 10}",
        data={"order_id": f"o-{n}", "customer_id": "c", "amount_cents": n, "currency": "EUR"},
        **kwargs,
    )


async def publish(kafka: KafkaSettings, topic: str, events: Sequence[Event]) -> None:
    """Publish events (all must be acknowledged)."""
    async with Producer(ProducerSettings(kafka=kafka, schemas=DEMO_SCHEMAS)) as producer:
        (await producer.publish_many(events, topic=topic)).raise_for_failures()


async def run_until_idle(
    app: App,
    settings: ConsumerSettings,
    instruments: Instruments | None = None,
    timeout: float = 60,
    *,
    telemetry: Telemetry | None = None,
) -> None:
    """Run a daemon in burst mode: until every assigned partition is processed and committed."""
    async with asyncio.timeout(timeout):
        await Consumer(app, settings, instruments=instruments, telemetry=telemetry).run(until_idle=True)


async def rows(database: str, group: str) -> list[asyncpg.Record]:
    """processed_events rows of a group."""
    conn = await asyncpg.connect(database)
    try:
        found: list[asyncpg.Record] = await conn.fetch(
            'SELECT event_id::text AS event_id, topic, partition, "offset", outcome FROM processed_events '
            "WHERE consumer_group = $1",
            group,
        )
        return found
    finally:
        await conn.close()


async def committed(kafka: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (absent: none)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
    finally:
        await admin.close()
