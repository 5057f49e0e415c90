"""The fault suite's three-node KRaft cluster (tests/faults/cluster.py) losing a partition leader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from eventq.config import KafkaSettings
from eventq.consumers import App, Context
from eventq.kafka import create_topics, topic_shapes
from eventq.schemas import Event
from tests.conftest import read_to_end
from tests.faults.cluster import KafkaCluster
from tests.integration.consumer_kit import consumer_settings, run_until_idle

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

TOPIC = "replicated"
PARTITIONS = 6


@pytest.fixture
async def cluster(tmp_path: Path, kafka_lib: Path) -> AsyncIterator[KafkaCluster]:
    """A three-node cluster of the test's own (not started yet); stopped afterwards."""
    cluster = KafkaCluster(tmp_path / "cluster", kafka_lib)
    yield cluster
    await asyncio.to_thread(cluster.stop)


async def test_killed_leader_hands_over_and_loses_no_acknowledged_record(cluster: KafkaCluster, database: str) -> None:
    """With the leader of partition 0 SIGKILLed, another node leads it within 15 s, acks=all writes to
    every partition still succeed on two nodes, the restarted node is back in every ISR, and every
    acknowledged record is readable exactly once; a daemon then creates its dead-letter topic with the
    source's three replicas."""
    await asyncio.to_thread(cluster.start)
    kafka = KafkaSettings(bootstrap_servers=cluster.bootstrap_servers, client_id="eventq-tests")
    await create_topics(
        kafka, [TOPIC], partitions=PARTITIONS, replication_factor=3, config={"min.insync.replicas": "2"}
    )
    await cluster.wait_healthy(TOPIC, timeout=30)
    acknowledged: list[tuple[int, bytes]] = []
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()

    async def send_round(label: str) -> None:
        """Ten keyed records to every partition; returns once all are acknowledged."""
        records = [(p, f"{label}-{p}-{n}".encode()) for p in range(PARTITIONS) for n in range(10)]
        sends = [producer.send_and_wait(TOPIC, value, key=f"k{p}".encode(), partition=p) for p, value in records]
        await asyncio.wait_for(asyncio.gather(*sends), 30)
        acknowledged.extend(records)

    try:
        await send_round("three-nodes")
        old_leader = await cluster.leader_of(TOPIC, 0)
        assert old_leader in (1, 2, 3)

        await asyncio.to_thread(cluster.kill, old_leader)
        killed_at = time.monotonic()
        new_leader = await cluster.leader_of(TOPIC, 0)
        while new_leader in (old_leader, -1) and time.monotonic() - killed_at < 15:
            await asyncio.sleep(0.2)
            new_leader = await cluster.leader_of(TOPIC, 0)

        assert new_leader not in (old_leader, -1), "partition 0 kept no live leader for 15 s"
        await send_round("two-nodes")

        await asyncio.to_thread(cluster.restart, old_leader)
        await cluster.wait_healthy(TOPIC, timeout=30)
        await send_round("healed")
    finally:
        await producer.stop()

    assert len(acknowledged) == 3 * PARTITIONS * 10
    assert sorted((r.partition, r.value) for r in await read_to_end(kafka, TOPIC)) == sorted(acknowledged)

    # The records are not events: the daemon dead-letters them all, to the topic it creates.
    app = App("cluster", topics=[TOPIC])

    @app.handler("demo.order.created.v1")
    async def never_called(event: Event, ctx: Context) -> None:
        raise AssertionError("no record of the topic is an event")

    await run_until_idle(app, consumer_settings(kafka, database, TOPIC))
    assert (await topic_shapes(kafka, [f"{TOPIC}.dlt"]))[f"{TOPIC}.dlt"] == (PARTITIONS, 3)
