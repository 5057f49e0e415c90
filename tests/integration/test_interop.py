"""Interop with real outside clients: Kafka's own consumer-groups tool and confluent-kafka (librdkafka)."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as RdKafkaProducer

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, ConsumerSettings, Context
from eventq.dlq import replay
from eventq.errors import Reject
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event
from tests.conftest import TopicFactory, end_offsets
from tests.integration.consumer_kit import committed, consumer_settings, order, publish, run_until_idle
from tests.kafkatools import consumer_group_lag


async def replayed_scenario(
    kafka_settings: KafkaSettings, database: str, topic: str
) -> tuple[App, ConsumerSettings, int]:
    """12 orders on 3 partitions, half rejected then replayed once fixed: (app, settings, letters replayed)."""
    events = [order(i, key=f"k{i}") for i in range(12)]  # murmur2 puts these keys on all 3 partitions
    await publish(kafka_settings, topic, events)
    poison = {e.id for e in events[::2]}
    fixed = False
    app = App("billing", topics=[topic])

    @app.handler("demo.order.created.v1", max_attempts=1)
    async def charge(event: Event, ctx: Context) -> None:
        if event.id in poison and not fixed:
            raise Reject("card expired")

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)
    fixed = True
    report = await replay(kafka_settings, f"{topic}.dlt")
    return app, settings, len(report.replayed)


@pytest.mark.kafka
@pytest.mark.postgres
async def test_after_a_transactional_replay_the_daemon_leaves_no_lag_in_kafkas_consumer_groups_tool(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """After a transactional dlq replay, a daemon run until idle commits past the markers: LAG 0 everywhere."""
    topic = await new_topic(partitions=3)
    app, settings, replayed = await replayed_scenario(kafka_settings, database, topic)
    group = settings.group_id or ""
    await run_until_idle(app, settings)

    ends = await end_offsets(kafka_settings, topic)
    lag = await asyncio.to_thread(consumer_group_lag, kafka_settings.bootstrap_servers, group)
    assert replayed == 6
    assert sorted(ends) == [0, 1, 2] and min(ends.values()) > 0  # every partition holds records
    assert lag == {(topic, p): 0 for p in ends}
    assert await committed(kafka_settings, group, topic) == ends  # the committed offsets are the log ends


@pytest.mark.kafka
async def test_librdkafka_with_the_java_partitioner_and_eventq_put_each_key_on_the_same_partition(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """For 200 keys, confluent-kafka with partitioner murmur2_random and eventq's Producer pick the same partition."""
    topic = await new_topic(partitions=6)
    keys = [f"customer-{n}" for n in range(200)]
    async with Producer(ProducerSettings(kafka=kafka_settings)) as producer:
        report = await producer.publish_many(
            [Event(type="eventq.ping.v1", source="tests", key=key, data={"n": n}) for n, key in enumerate(keys)],
            topic=topic,
        )
    report.raise_for_failures()
    by_eventq = {key: outcome.partition for key, outcome in zip(keys, report.published, strict=True)}

    by_librdkafka = await asyncio.to_thread(_produce_with_librdkafka, kafka_settings.bootstrap_servers, topic, keys)

    assert len(by_librdkafka) == len(by_eventq) == 200
    assert set(by_eventq.values()) == set(range(6))  # spread over every partition, not all on one
    assert by_librdkafka == by_eventq


def _produce_with_librdkafka(bootstrap: str, topic: str, keys: list[str]) -> dict[str, int]:
    producer = RdKafkaProducer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    landed: dict[str, int] = {}
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            landed[(message.key() or b"").decode()] = message.partition() or 0

    for key in keys:
        producer.produce(topic, value=b"{}", key=key.encode(), on_delivery=delivered)
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, (remaining, errors)
    return landed


@pytest.mark.kafka
@pytest.mark.postgres
async def test_a_running_daemon_commits_past_replay_markers_and_its_lag_gauge_reads_zero(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A daemon that keeps running (not burst mode) reaches the log end past the markers, and eventq's gauge agrees."""
    topic = await new_topic(partitions=3)
    app, settings, replayed = await replayed_scenario(kafka_settings, database, topic)
    ends = await end_offsets(kafka_settings, topic)
    daemon = Consumer(app, settings)
    running = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(30):
            while await committed(kafka_settings, settings.group_id or "", topic) != ends:
                await asyncio.sleep(0.5)
        gauge = sorted(daemon._lag())  # noqa: SLF001 - what the eventq.consumer.lag gauge is set from
    finally:
        daemon.stop()
        await running
    lag = await asyncio.to_thread(consumer_group_lag, kafka_settings.bootstrap_servers, settings.group_id or "")
    assert replayed == 6
    assert gauge == [(topic, p, 0) for p in sorted(ends)]
    assert lag == {(topic, p): 0 for p in ends}
