"""Producer throughput: eventq against raw aiokafka and confluent-kafka, same broker, same run.

Every variant publishes the same N events (~200-byte JSON payloads, 1,000 keys) to
a fresh 6-partition topic with acks=all and idempotence, and is timed from the
first send to the last acknowledgement. Event objects (eventq) or encoded records
(baselines) are built before the clock starts, so the eventq figures include
schema validation and envelope encoding and the baselines do not. A warm-up round
(unmeasured) lets the broker's JIT settle; then the variants take turns, round after
round, so a drift in the machine's load hits all of them alike. The median of
``--repeat`` rounds is reported.

    python benchmarks/producer.py [--events 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.partitioner import murmur2  # noqa: E402

from eventq.config import KafkaSettings  # noqa: E402
from eventq.kafka import create_topics  # noqa: E402
from eventq.producers import Producer, ProducerSettings  # noqa: E402
from eventq.schemas import EncodedEvent, Event, encode  # noqa: E402
from eventq.schemas.envelope import encode_parts  # noqa: E402

PARTITIONS = 6
CHUNK = 10_000  # events per publish_many call / per gather of publish calls


def make_events(n: int) -> list[Event]:
    return [
        Event(
            type="eventq.ping.v1",
            source="bench",
            key=f"customer-{i % 1000}",
            data={"n": i, "customer": f"customer-{i % 1000}", "note": "x" * 150},
        )
        for i in range(n)
    ]


async def fresh_topic(kafka: KafkaSettings) -> str:
    name = f"bench.{uuid.uuid4().hex[:10]}"
    await create_topics(kafka, [name], partitions=PARTITIONS)
    return name


def aiokafka_producer(kafka: KafkaSettings, batch_bytes: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.client_kwargs(), acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=batch_bytes, max_request_size=2 * 1024 * 1024,
    )


async def run_eventq_publish(kafka: KafkaSettings, events: list[Event], records: list[EncodedEvent]) -> float:
    topic = await fresh_topic(kafka)
    async with Producer(ProducerSettings(kafka=kafka, default_topic=topic)) as producer:
        await producer.publish(events[0])
        started = time.perf_counter()
        for i in range(0, len(events), CHUNK):
            await asyncio.gather(*(producer.publish(e) for e in events[i : i + CHUNK]))
        return time.perf_counter() - started


async def run_eventq_publish_many(kafka: KafkaSettings, events: list[Event], records: list[EncodedEvent]) -> float:
    topic = await fresh_topic(kafka)
    async with Producer(ProducerSettings(kafka=kafka, default_topic=topic)) as producer:
        await producer.publish(events[0])
        started = time.perf_counter()
        for i in range(0, len(events), CHUNK):
            report = await producer.publish_many(events[i : i + CHUNK])
            report.raise_for_failures()
        return time.perf_counter() - started


async def run_aiokafka_send(kafka: KafkaSettings, events: list[Event], records: list[EncodedEvent]) -> float:
    topic = await fresh_topic(kafka)
    producer = aiokafka_producer(kafka, 512 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        started = time.perf_counter()
        for i in range(0, len(records), CHUNK):
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=r.headers, timestamp_ms=r.timestamp_ms)
                for r in records[i : i + CHUNK]
            ]
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def run_aiokafka_batch(kafka: KafkaSettings, events: list[Event], records: list[EncodedEvent]) -> float:
    """The ceiling for any aiokafka-based producer: pre-encoded records, batch API.

    Written as a careful user would: one murmur2 per distinct key, every batch closed
    before it is submitted (an open batch lingers ``linger_ms`` in the accumulator),
    partitions filled concurrently (with idempotence aiokafka keeps one batch in flight
    per partition, so filling them one after another would stall on each).
    """
    topic = await fresh_topic(kafka)
    producer = aiokafka_producer(kafka, 512 * 1024)
    await producer.start()

    async def send_partition(p: int, group: list[EncodedEvent]) -> None:
        futures = []
        batch = producer.create_batch()
        for r in group:
            if batch.append(key=r.key, value=r.value, timestamp=r.timestamp_ms, headers=r.headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                batch.append(key=r.key, value=r.value, timestamp=r.timestamp_ms, headers=r.headers)
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)

    try:
        await producer.send_and_wait(topic, b"warm-up")
        partitions = sorted(await producer.partitions_for(topic))
        started = time.perf_counter()
        for i in range(0, len(records), CHUNK):
            by_key: dict[bytes | None, list[EncodedEvent]] = {}
            groups: dict[int, list[EncodedEvent]] = {}
            for r in records[i : i + CHUNK]:
                group = by_key.get(r.key)
                if group is None:
                    p = partitions[(murmur2(r.key) & 0x7FFFFFFF) % len(partitions)] if r.key else 0
                    group = by_key[r.key] = groups.setdefault(p, [])
                group.append(r)
            await asyncio.gather(*(send_partition(p, group) for p, group in groups.items()))
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def run_confluent(kafka: KafkaSettings, events: list[Event], records: list[EncodedEvent]) -> float:
    from confluent_kafka import Producer as CProducer

    topic = await fresh_topic(kafka)
    producer = CProducer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    producer.produce(topic, b"warm-up")
    producer.flush()
    failures = 0

    def on_delivery(err: object, msg: object) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    started = time.perf_counter()
    for r in records:
        producer.produce(topic, r.value, r.key, headers=r.headers, timestamp=r.timestamp_ms, on_delivery=on_delivery)
        producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"confluent-kafka reported {failures} failed deliveries")
    return elapsed


async def stages(kafka: KafkaSettings, events: list[Event], repeat: int) -> None:
    """CPU µs per event of each stage of publish_many, chunk by chunk as it runs them.

    Each stage is timed on its own with the producer's own code (thread CPU time, less
    disturbed by other load than wall time); then the same chunks go through
    ``publish_many`` for its CPU and wall time. The stages run with the garbage
    collector off (their own lists would make it scan the benchmark's large heap);
    ``publish_many`` runs with it on and its GC time is shown. What its CPU time has
    beyond the stages and GC is the event loop, aiokafka's sender, acknowledgements
    and the report.
    """
    import gc

    from eventq.schemas.envelope import record_headers

    gc_seconds, gc_started = 0.0, 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_seconds, gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        else:
            gc_seconds += time.perf_counter() - gc_started

    topic = await fresh_topic(kafka)
    async with Producer(ProducerSettings(kafka=kafka, default_topic=topic)) as producer:
        await producer.publish(events[0])
        aio = producer._aio
        assert aio is not None
        gc.callbacks.append(on_gc)
        print(f"publish_many stages, CPU µs per event (chunks of {CHUNK:,}):")
        for _ in range(repeat):
            spent = dict.fromkeys(("validate", "encode", "partition", "headers", "append+close"), 0.0)
            gc.collect()
            gc.disable()
            for i in range(0, len(events), CHUNK):
                chunk = events[i : i + CHUNK]
                t0 = time.thread_time()
                for e in chunk:
                    producer.registry.validate(e.type, e.data)
                t1 = time.thread_time()
                parts = [encode_parts(e, max_event_bytes=producer.settings.max_event_bytes) for e in chunk]
                t2 = time.thread_time()
                groups = producer._group_by_partition(aio, topic, parts)
                t3 = time.thread_time()
                headers = [record_headers(p) for p in parts]
                t4 = time.thread_time()
                for indexes in groups.values():
                    batch = aio.create_batch()
                    for j in indexes:
                        p = parts[j]
                        if batch.append(key=p[0], value=p[1], timestamp=p[2], headers=headers[j]) is None:
                            batch = aio.create_batch()
                            batch.append(key=p[0], value=p[1], timestamp=p[2], headers=headers[j])
                    batch.close()
                t5 = time.thread_time()
                for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    spent[name] += seconds
            del parts, headers, groups
            gc.enable()
            gc_seconds = 0.0
            cpu, wall = time.thread_time(), time.perf_counter()
            for i in range(0, len(events), CHUNK):
                (await producer.publish_many(events[i : i + CHUNK])).raise_for_failures()
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            per = 1e6 / len(events)
            rest = cpu - sum(spent.values()) - gc_seconds
            print("  " + ", ".join(f"{name} {seconds * per:.2f}" for name, seconds in spent.items())
                  + f" | publish_many CPU {cpu * per:.2f}: GC {gc_seconds * per:.2f},"
                  f" send/acks/report {rest * per:.2f}; wall {wall * per:.2f}", flush=True)
        gc.callbacks.remove(on_gc)


VARIANTS: dict[str, Callable[[KafkaSettings, list[Event], list[EncodedEvent]], Awaitable[float]]] = {
    "eventq publish_many": run_eventq_publish_many,
    "eventq publish (concurrent)": run_eventq_publish,
    "aiokafka send_batch (pre-encoded)": run_aiokafka_batch,
    "aiokafka send (pre-encoded)": run_aiokafka_send,
    "confluent-kafka produce (pre-encoded)": run_confluent,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="", help="comma-separated substrings of variant names (default: all)")
    parser.add_argument("--stages", action="store_true", help="print publish_many's CPU time per stage instead")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("EVENTQ_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    args = parser.parse_args()
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)  # aiokafka's retry chatter while a new topic elects leaders
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("confluent-kafka is not installed (pip install -e '.[bench]'); skipping that baseline")
        VARIANTS.pop("confluent-kafka produce (pre-encoded)")

    if args.variants:
        wanted = args.variants.split(",")
        for name in [n for n in VARIANTS if not any(w in n for w in wanted)]:
            VARIANTS.pop(name)
    events = make_events(args.events)
    records = [encode(e) for e in events]
    if args.stages:
        asyncio.run(stages(kafka, events, args.repeat))
        return 0
    size = statistics.mean(len(r.value) for r in records)
    print(f"producer benchmark: {args.events:,} events, payload {size:.0f} B, "
          f"{PARTITIONS} partitions, acks=all, idempotent, median of {args.repeat}")
    warm_up = len(events) // 4
    asyncio.run(run_aiokafka_batch(kafka, events[:warm_up], records[:warm_up]))
    asyncio.run(run_eventq_publish_many(kafka, events[:warm_up], records[:warm_up]))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):
        for name, variant in VARIANTS.items():
            times[name].append(asyncio.run(variant(kafka, events, records)))
    rates: dict[str, float] = {}
    for name, measured in times.items():
        rates[name] = args.events / statistics.median(measured)
        spread = ", ".join(f"{args.events / t:,.0f}" for t in measured)
        print(f"  {name:<40} {rates[name]:>10,.0f} events/s   (rounds: {spread})", flush=True)
    base = rates["eventq publish_many"]
    print("ratios (eventq publish_many / baseline):")
    for name, rate in rates.items():
        if name != "eventq publish_many":
            print(f"  vs {name:<37} {base / rate:>6.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
