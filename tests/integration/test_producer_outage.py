"""The producer while its broker goes away and comes back (a broker of the test's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventq.config import KafkaSettings
from eventq.errors import BrokerUnavailable, PublishError, PublishTimeout
from eventq.kafka import create_topics
from eventq.producers import Failed, Producer, ProducerSettings, Published
from eventq.schemas import Event, decode
from eventq_dev.devstack.kafka import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOPIC = "outage"


def ping(n: int) -> Event:
    return Event(type="eventq.ping.v1", source="tests", key=f"k{n % 4}", data={"n": n})


async def stored(kafka: KafkaSettings) -> list[tuple[str, str, int]]:
    """(event id, key, n) of every record in the topic, in partition then offset order."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[tuple[int, int, str, str, int]] = []
        remaining = sum(ends.values())
        while remaining > 0:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    event = decode(r.key, r.value, r.headers)
                    found.append((r.partition, r.offset, event.id, event.key or "", event.data["n"]))
                remaining -= len(records)
        return [(event_id, key, n) for _, _, event_id, key, n in sorted(found)]
    finally:
        await consumer.stop()


async def test_broker_down_fails_publishes_and_recovery_needs_no_new_producer(broker: KafkaBroker) -> None:
    """With the broker stopped, publish raises and publish_many reports every event failed; after a
    restart the same producer publishes again, and every event ever reported Published is stored."""
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}")
    await create_topics(kafka, [TOPIC], partitions=3)
    reported: list[Published] = []
    settings = ProducerSettings(kafka=kafka, default_topic=TOPIC, delivery_timeout_s=3)
    async with Producer(settings) as producer:
        reported.append(await producer.publish(ping(0)))

        await asyncio.to_thread(broker.stop)
        with pytest.raises((PublishTimeout, BrokerUnavailable)) as info:
            await producer.publish(ping(1))
        assert info.value.retriable and info.value.topic == TOPIC
        report = await producer.publish_many([ping(n) for n in range(2, 12)])
        assert not report.published
        assert all(isinstance(o, Failed) and isinstance(o.error, PublishError) for o in report.outcomes)

        await asyncio.to_thread(broker.start)
        reported.append(await producer.publish(ping(12)))
        after = await producer.publish_many([ping(n) for n in range(13, 23)])
        assert after.ok
        reported.extend(after.published)

    assert {p.event_id for p in reported} <= {event_id for event_id, _, _ in await stored(kafka)}


async def test_broker_killed_mid_stream_loses_no_acknowledged_event(broker: KafkaBroker) -> None:
    """A broker killed with SIGKILL while publish_many streams, then restarted, has stored every
    event that was reported Published, none twice, and each key's events in publish order."""
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}")
    await create_topics(kafka, [TOPIC], partitions=3)
    settings = ProducerSettings(kafka=kafka, default_topic=TOPIC, delivery_timeout_s=3, max_batch_bytes=8 * 1024)
    acknowledged: set[str] = set()
    failed = 0
    stop = asyncio.Event()

    async def stream(producer: Producer) -> None:
        nonlocal failed
        n = 0
        while not stop.is_set():
            report = await producer.publish_many([ping(i) for i in range(n, n + 500)])
            acknowledged.update(p.event_id for p in report.published)
            failed += len(report.failed)
            n += 500

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.05)

    async with Producer(settings) as producer:
        streaming = asyncio.create_task(stream(producer))
        await asyncio.wait_for(until(lambda: len(acknowledged) >= 2000), 60)
        await asyncio.to_thread(broker.kill)
        await asyncio.wait_for(until(lambda: failed > 0), 60)
        before_restart = len(acknowledged)
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(until(lambda: len(acknowledged) >= before_restart + 2000), 60)
        stop.set()
        await streaming

    records = await stored(kafka)
    ids = [event_id for event_id, _, _ in records]
    assert acknowledged <= set(ids)
    assert len(ids) == len(set(ids)), "a retry after the kill wrote an event twice"
    per_key: dict[str, list[int]] = {}
    for _, key, n in records:
        per_key.setdefault(key, []).append(n)
    assert all(seq == sorted(seq) for seq in per_key.values()), "a retry reordered a key's events"
