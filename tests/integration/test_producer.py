"""The producer against the real broker, read back with a plain aiokafka consumer."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from eventq.config import KafkaSettings
from eventq.errors import BrokerUnavailable, MessageTooLarge, SchemaViolation, TopicNotFound
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event, caused_by, decode
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader, TopicFactory, end_offsets

pytestmark = pytest.mark.kafka


def ping(n: int, key: str | None = None) -> Event:
    return Event(type="eventq.ping.v1", source="tests", key=key, data={"n": n})


def producer_for(kafka: KafkaSettings, **overrides: object) -> Producer:
    return Producer(ProducerSettings(kafka=kafka, schemas=DEMO_SCHEMAS, **overrides))  # type: ignore[arg-type]


async def test_publish_reports_where_the_broker_stored_the_event(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """publish() returns the partition and offset at which a consumer then finds the same event."""
    topic = await new_topic()
    event = Event(
        type="demo.order.created.v1",
        source="tests",
        key="customer-1",
        subject="order-1",
        data={"order_id": "order-1", "customer_id": "customer-1", "amount_cents": 990, "currency": "EUR"},
    )
    async with producer_for(kafka_settings) as producer:
        landed = await producer.publish(event, topic=topic)

    [record] = await read_topic(topic, expected=1)
    assert (record.partition, record.offset) == (landed.partition, landed.offset)
    assert record.key == b"customer-1"
    headers = dict(record.headers)
    assert headers["ce_id"] == event.id.encode()
    assert headers["ce_type"] == b"demo.order.created.v1"
    assert headers["ce_subject"] == b"order-1"
    assert headers["content-type"] == b"application/json"
    assert record.timestamp == int(event.time.timestamp() * 1000)
    assert decode(record.key, record.value, record.headers) == event


async def test_follow_up_event_carries_correlation_and_causation_on_the_wire(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """An event created under caused_by() arrives with the cause's correlation id and id as causation."""
    topic = await new_topic(partitions=1)
    cause = ping(1)
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        await producer.publish(cause)
        with caused_by(cause.id, cause.correlation_id or cause.id):
            await producer.publish(ping(2))

    first, second = await read_topic(topic, expected=2)
    assert dict(second.headers)["ce_correlationid"] == cause.id.encode()
    assert dict(second.headers)["ce_causationid"] == cause.id.encode()
    assert "ce_causationid" not in dict(first.headers)


async def test_publish_many_reports_each_outcome_at_its_real_offset(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """Every event of publish_many is reported Published at exactly the offset where it was written."""
    topic = await new_topic()
    events = [ping(n, key=f"k{n % 13}") for n in range(3000)]
    async with producer_for(kafka_settings, default_topic=topic, max_batch_bytes=64 * 1024) as producer:
        report = await producer.publish_many(events)

    assert report.ok and len(report.outcomes) == 3000
    assert [o.event_id for o in report.outcomes] == [e.id for e in events]
    records = await read_topic(topic, expected=3000)
    assert len(records) == 3000
    stored = {(r.partition, r.offset): dict(r.headers)["ce_id"].decode() for r in records}
    assert {(o.partition, o.offset): o.event_id for o in report.published} == stored


async def test_publish_many_keeps_per_key_order_and_same_partition_as_publish(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """Events of one key land in one partition, in the order given, and publish() agrees on that partition."""
    topic = await new_topic()
    keys = [f"customer-{i}" for i in range(20)]
    events = [ping(n, key=keys[n % 20]) for n in range(2000)]
    async with producer_for(kafka_settings, default_topic=topic, max_batch_bytes=32 * 1024) as producer:
        report = await producer.publish_many(events)
        singles = {key: await producer.publish(ping(-1, key=key)) for key in keys}

    report.raise_for_failures()
    records = await read_topic(topic, expected=2020)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        n = decode(record.key, record.value, record.headers).data["n"]
        if n >= 0:
            by_key[record.key or b""].append(n)
        partition_of[record.key or b""].add(record.partition)
    assert all(seq == sorted(seq) and len(seq) == 100 for seq in by_key.values())
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert {k.encode(): {p.partition} for k, p in singles.items()} == dict(partition_of)


async def test_keyless_events_of_one_call_go_to_one_partition(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """Events without a key are sent together to a single partition (sticky partitioning)."""
    topic = await new_topic()
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        report = await producer.publish_many([ping(n) for n in range(50)])
    assert len({o.partition for o in report.published}) == 1
    assert sorted(o.offset for o in report.published) == list(range(50))


async def test_invalid_event_in_publish_many_sends_nothing(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """One schema-invalid event makes publish_many raise before any event reaches the broker."""
    topic = await new_topic()
    bad = Event(type="demo.order.paid.v1", source="tests", data={"order_id": "o-1"})
    events = [ping(0), ping(1), bad, ping(3)]
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        with pytest.raises(SchemaViolation) as info:
            await producer.publish_many(events)
        with pytest.raises(SchemaViolation):
            await producer.publish(bad)
    assert "events[2]" in "".join(info.value.__notes__)
    assert set((await end_offsets(kafka_settings, topic)).values()) == {0}


async def test_missing_topic_fails_fast_with_topic_not_found(kafka_settings: KafkaSettings) -> None:
    """Publishing to a topic that does not exist raises TopicNotFound naming it, well before the timeout."""
    async with producer_for(kafka_settings, delivery_timeout_s=30) as producer:
        started = time.monotonic()
        with pytest.raises(TopicNotFound, match="'test.does-not-exist'"):
            await producer.publish(ping(1), topic="test.does-not-exist")
        with pytest.raises(TopicNotFound):
            await producer.publish_many([ping(1)], topic="test.does-not-exist")
    assert time.monotonic() - started < 25  # failed on metadata, not by waiting out the 30 s timeout


async def test_broker_refusing_record_size_gives_message_too_large(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """A record over the topic's max.message.bytes raises MessageTooLarge and is reported failed in publish_many."""
    topic = await new_topic(partitions=1, config={"max.message.bytes": "2000"})
    big = Event(type="eventq.ping.v1", source="tests", data={"blob": "x" * 5000})
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        with pytest.raises(MessageTooLarge, match=topic):
            await producer.publish(big)
        report = await producer.publish_many([big])
        small = await producer.publish(ping(1))
    assert not report.ok
    assert isinstance(report.failed[0].error, MessageTooLarge)
    assert small.offset == 0  # nothing of the refused records was stored


async def test_unreachable_broker_at_start_is_broker_unavailable() -> None:
    """Starting a producer with no broker at the address raises BrokerUnavailable saying what to do."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(BrokerUnavailable, match="eventq dev up"):
        async with producer_for(kafka):
            pass


async def test_concurrent_publish_calls_are_all_acknowledged(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """Many publish() calls in flight at once each get their own distinct acknowledged offset."""
    topic = await new_topic()
    events = [ping(n, key=f"k{n % 5}") for n in range(500)]
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        results = await asyncio.gather(*(producer.publish(e) for e in events))
    assert len({(r.partition, r.offset) for r in results}) == 500
    assert len(await read_topic(topic, expected=500)) == 500


async def test_active_trace_context_travels_in_traceparent_header(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """An event published inside an active span carries that span's W3C traceparent."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("tests")
    topic = await new_topic(partitions=1)
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        with tracer.start_as_current_span("caller") as span:
            await producer.publish(ping(1))
            await producer.publish_many([ping(2)])
        await producer.publish(ping(3))
    ctx = span.get_span_context()
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode()
    first, second, third = await read_topic(topic, expected=3)
    assert dict(first.headers)["traceparent"] == expected
    assert dict(second.headers)["traceparent"] == expected
    assert "traceparent" not in dict(third.headers)


async def test_concurrent_publish_calls_keep_call_order_and_isolate_bad_events(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """publish() calls started together are stored per key in call order, and an invalid one fails
    only its own caller."""
    topic = await new_topic()
    events = [ping(n, key=f"k{n % 3}") for n in range(300)]
    bad = Event(type="demo.order.paid.v1", source="tests", key="k0", data={"order_id": "o"})
    async with producer_for(kafka_settings, default_topic=topic) as producer:
        results = await asyncio.gather(
            *(producer.publish(e) for e in events[:150]),
            producer.publish(bad),
            *(producer.publish(e) for e in events[150:]),
            return_exceptions=True,
        )
    assert isinstance(results[150], SchemaViolation)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 150)
    records = await read_topic(topic, expected=300)
    assert len(records) == 300
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_key[record.key or b""].append(decode(record.key, record.value, record.headers).data["n"])
    assert all(seq == sorted(seq) and len(seq) == 100 for seq in per_key.values())


async def test_thousands_of_publish_calls_in_separate_turns_are_all_acknowledged_in_call_order(
    kafka_settings: KafkaSettings, new_topic: TopicFactory
) -> None:
    """3,000 publish() calls of one key, each made in its own loop turn (so each is its own record
    batch queued behind the others), are all acknowledged, at offsets in call order — none fails
    early with PublishTimeout (aiokafka's add_batch gave up within seconds) or overtakes another."""
    topic = await new_topic(partitions=1)
    async with producer_for(kafka_settings) as producer:
        calls = []
        for n in range(3000):
            calls.append(asyncio.create_task(producer.publish(ping(n, key="one-key"), topic=topic)))
            await asyncio.sleep(0)  # the next call comes in a later turn of the loop
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failures, f"{len(failures)} of 3000 failed, first: {failures[0]!r}"
    offsets = [o.offset for o in outcomes if not isinstance(o, BaseException)]
    assert offsets == sorted(offsets) and len(set(offsets)) == 3000
