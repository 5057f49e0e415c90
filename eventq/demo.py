"""The README demo: publish correlated events to the real broker and read them back.

Later parts of eventq extend it (consumer daemon, dead letter, replay).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from eventq.config import KafkaSettings
from eventq.kafka import create_topics
from eventq.producers import Producer, ProducerSettings, Published
from eventq.schemas import Event, caused_by, decode

SOURCE = "eventq-demo"


def _order(n: int) -> Event:
    return Event(
        type="demo.order.created.v1",
        source=SOURCE,
        key=f"customer-{n % 50}",
        data={
            "order_id": f"order-{n}",
            "customer_id": f"customer-{n % 50}",
            "amount_cents": 1000 + n,
            "currency": "EUR",
            "items": [{"sku": f"sku-{n % 7}", "quantity": 1 + n % 3}],
        },
    )


async def run_demo(kafka: KafkaSettings, *, topic: str, count: int, echo: Callable[[str], None]) -> None:
    """Publish ``count`` orders plus one follow-up, read them back, check keys kept order."""
    created = await create_topics(kafka, [topic], partitions=6)
    echo(f"topic {topic}: {'created' if created else 'exists'} (6 partitions)")

    async with Producer(ProducerSettings(kafka=kafka, default_topic=topic)) as producer:
        first = _order(0)
        landed = await producer.publish(first)
        echo(f"publish      {first.type} {first.id} -> partition {landed.partition} offset {landed.offset}")

        # A follow-up published "while handling" the first: ids are inherited, not passed.
        with caused_by(first.id, first.correlation_id or first.id):
            paid = Event(
                type="demo.order.paid.v1",
                source=SOURCE,
                key=first.key,
                data={"order_id": "order-0", "amount_cents": 1000},
            )
        landed_paid = await producer.publish(paid)
        echo(f"follow-up    {paid.type} correlation={paid.correlation_id} causation={paid.causation_id}")

        orders = [_order(n) for n in range(1, count + 1)]
        started = time.perf_counter()
        report = await producer.publish_many(orders)
        elapsed = time.perf_counter() - started
        report.raise_for_failures()
        echo(f"publish_many {len(report.published)} events acknowledged in {elapsed:.3f}s "
             f"({len(report.published) / elapsed:,.0f} events/s)")

    wanted = [landed, landed_paid, *report.published]
    seen = await _read_back(kafka, topic, wanted)
    echo(f"read back    {len(seen)}/{len(wanted)} events with a plain aiokafka consumer")
    for event, partition, offset in seen[:3]:
        echo(f"  p{partition}@{offset} {event.type} key={event.key} id={event.id}")
    sequence: dict[str, list[int]] = {}
    for event, _, _ in seen:
        if event.type == "demo.order.created.v1":
            sequence.setdefault(event.key or "", []).append(int(event.data["order_id"].split("-")[1]))
    in_order = all(s == sorted(s) for s in sequence.values())
    echo(f"per-key order kept for {len(sequence)} keys: {'yes' if in_order else 'NO'}")
    if len(seen) != len(wanted) or not in_order:
        raise SystemExit(1)


async def _read_back(
    kafka: KafkaSettings, topic: str, published: list[Published], timeout_s: float = 30.0
) -> list[tuple[Event, int, int]]:
    """Read from the first offset published in each partition until every id is seen."""
    ids = {p.event_id for p in published}
    start: dict[TopicPartition, int] = {}
    for p in published:
        tp = TopicPartition(topic, p.partition)
        start[tp] = min(start.get(tp, p.offset), p.offset)
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        found: list[tuple[Event, int, int]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < len(ids) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for record in records:
                    event = decode(record.key, record.value, record.headers)
                    if event.id in ids:
                        found.append((event, record.partition, record.offset))
        found.sort(key=lambda item: (item[1], item[2]))
        return found
    finally:
        await consumer.stop()
