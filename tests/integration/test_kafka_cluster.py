"""The fault suite's three-node KRaft cluster (tests/faults/cluster.py) losing a partition leader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from eventq.config import KafkaSettings
from eventq.kafka import create_topics
from tests.faults.cluster import KafkaCluster

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOPIC = "replicated"
PARTITIONS = 6


@pytest.fixture
async def cluster(tmp_path: Path, kafka_lib: Path) -> AsyncIterator[KafkaCluster]:
    """A three-node cluster of the test's own (not started yet); stopped afterwards."""
    cluster = KafkaCluster(tmp_path / "cluster", kafka_lib)
    yield cluster
    await asyncio.to_thread(cluster.stop)


async def read_all(kafka: KafkaSettings, expected: int) -> list[tuple[int, bytes]]:
    """(partition, value) of every record in the topic; waits up to 15 s for ``expected`` of them."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 15
        while len(found) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=250)).values():
                found.extend((r.partition, r.value) for r in records if r.value is not None)
        return found
    finally:
        await consumer.stop()


async def test_killed_leader_hands_over_and_loses_no_acknowledged_record(cluster: KafkaCluster) -> None:
    """With the leader of partition 0 SIGKILLed, another node leads it within 15 s, acks=all writes to
    every partition still succeed on two nodes, the restarted node is back in every ISR, and every
    acknowledged record is readable exactly once."""
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
    assert sorted(await read_all(kafka, len(acknowledged))) == sorted(acknowledged)
