"""End-to-end latency: ``publish()`` one event at a time at a fixed rate to a running eventq daemon.

For each rate (1,000 and 100 events/s by default) a fresh 6-partition topic, a fresh
consumer group and, in this same process, an eventq daemon (``Consumer.run()``, not
``until_idle``; default settings, GC tuned as ``eventq consume`` tunes it) whose no-op
handler notes ``time.perf_counter_ns()`` when it starts. The publisher schedules
``Producer.publish(event)`` calls open-loop at ``t0 + i / rate`` (each call its own
task, so a slow acknowledgement does not delay the next call: no coordinated omission)
and notes ``perf_counter_ns()`` just before each call. Latency = handler start −
publish call start, one clock since both run in one process; it includes the
producer's linger (``linger_ms``, 5 ms by default), the broker's ``acks=all`` write,
the fetch, decoding, schema validation and the dedupe query before the handler. The
publisher and the daemon share one event loop and one core, as a service that
publishes and consumes would.

Before the timed events, events are published one at a time until the daemon has
handled one (its group joined and partitions assigned), then for ``--warmup`` seconds
at the rate, not counted. Each round runs every rate; the median of ``--repeat``
rounds' p50 and p99 and the largest max are reported, against the goals of issue 14:
at 1,000/s p50 <= 5 ms and p99 <= 20 ms; at 100/s p99 <= 10 ms.

    python benchmarks/latency.py [--rates 1000,100] [--seconds 10] [--warmup 2] [--repeat 3] [--linger-ms MS]

(``run.py`` passes every benchmark the same arguments; ``--events`` is ignored here.)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from consumer import create_database, delete_topics, order, sql  # noqa: E402

from eventq.cli import tune_gc_for_daemon  # noqa: E402
from eventq.config import KafkaSettings  # noqa: E402
from eventq.consumers import App, Consumer, ConsumerSettings, Context  # noqa: E402
from eventq.database import DEFAULT_DATABASE_URL, DatabaseSettings  # noqa: E402
from eventq.kafka import create_topics  # noqa: E402
from eventq.producers import Producer, ProducerSettings  # noqa: E402
from eventq.schemas import Event  # noqa: E402
from eventq.wire import H_ID  # noqa: E402
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS  # noqa: E402

PARTITIONS = 6
GOALS = {1000: {"p50": 5.0, "p99": 20.0}, 100: {"p99": 10.0}}  # ms, issue 14
RECEIPT_TIMEOUT_S = 60.0
VARIANTS = {"eventq": "eventq daemon", "raw": "raw aiokafka"}


@dataclasses.dataclass
class Round:
    variant: str  # eventq | raw
    rate: int
    latencies_ms: list[float]
    achieved: float  # calls per second actually made
    missing: int  # published (acknowledged) but never handled
    failed: int  # publish() raised

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_loop(
    kafka: KafkaSettings, topic: str, received: dict[str, int], arrived: asyncio.Event, stopping: asyncio.Event
) -> None:
    """The baseline daemon: aiokafka ``getmany`` + ``commit()`` per batch, receipt noted per record, nothing else."""
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=f"{topic}-raw", enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for r in records:
                    now = time.perf_counter_ns()
                    received[dict(r.headers)[H_ID].decode()] = now
            if batches:
                arrived.set()
                await consumer.commit()
    finally:
        await consumer.stop()


async def measure(args: argparse.Namespace, kafka: KafkaSettings, database_url: str, rate: int, variant: str) -> Round:
    topic = f"bench.latency.{rate}.{uuid.uuid4().hex[:8]}"
    await create_topics(kafka, [topic, f"{topic}.dlt"], partitions=PARTITIONS)
    received: dict[str, int] = {}
    arrived = asyncio.Event()
    app = App(f"{topic}-group", topics=[topic], schemas=DEMO_SCHEMAS)

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: Context) -> None:
        received[event.id] = time.perf_counter_ns()
        arrived.set()

    settings = ConsumerSettings(
        kafka=kafka, database=DatabaseSettings(url=database_url), group_id=f"{topic}-group", topics=(topic,),
        backoff_jitter=0.0,
    )
    producer_settings = ProducerSettings(kafka=kafka, default_topic=topic, schemas=DEMO_SCHEMAS)
    if args.linger_ms is not None:
        producer_settings = dataclasses.replace(producer_settings, linger_ms=args.linger_ms)
    stopping = asyncio.Event()
    if variant == "eventq":
        daemon = Consumer(app, settings)
        running = asyncio.create_task(daemon.run())
        stop = daemon.stop
    else:
        running = asyncio.create_task(raw_loop(kafka, topic, received, arrived, stopping))
        stop = stopping.set
    try:
        async with Producer(producer_settings) as producer:
            deadline = time.monotonic() + RECEIPT_TIMEOUT_S
            while not received:  # the group has joined and the partitions are assigned
                if running.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon handled nothing within {RECEIPT_TIMEOUT_S:.0f} s")
                await producer.publish(order(0))
                with_timeout = asyncio.wait_for(arrived.wait(), 0.5)
                try:
                    await with_timeout
                except TimeoutError:
                    pass
            await paced(producer, rate, int(rate * args.warmup), {})  # not counted
            started: dict[str, int] = {}
            begun = time.perf_counter()
            failed = await paced(producer, rate, int(rate * args.seconds), started)
            achieved = len(started) / (time.perf_counter() - begun)
            while not all(event_id in received for event_id in started) and time.monotonic() < deadline + 600:
                await asyncio.sleep(0.05)
    finally:
        stop()
        await running
        await delete_topics(kafka, [topic, f"{topic}.dlt"])
    latencies = [(received[i] - t) / 1e6 for i, t in started.items() if i in received]
    return Round(variant, rate, latencies, achieved, len(started) - len(latencies), failed)


async def paced(producer: Producer, rate: int, count: int, started: dict[str, int]) -> int:
    """``count`` publish() calls at ``rate`` a second, open-loop; ``started``: event id → call start (ns).

    Returns how many calls failed (their events are removed from ``started``)."""
    events = [order(n) for n in range(count)]
    calls = []
    t0 = time.perf_counter()
    for n, event in enumerate(events):
        wait = t0 + n / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        started[event.id] = time.perf_counter_ns()
        calls.append(asyncio.create_task(producer.publish(event)))
    failed = 0
    for n, outcome in enumerate(await asyncio.gather(*calls, return_exceptions=True)):
        if isinstance(outcome, BaseException):  # counted, not timed: the handler never sees it
            failed += 1
            started.pop(events[n].id, None)
            if failed == 1:
                print(f"  publish failed: {type(outcome).__name__}: {outcome} (cause: {outcome.__cause__!r})",
                      file=sys.stderr)
    return failed


def report(rounds: list[Round], linger_ms: int) -> int:
    print(f"  {'daemon':<14} {'rate /s':>8} {'events':>7} {'achieved':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
          "  rounds p50 / p99 / max")
    missing = 0
    medians: dict[tuple[str, int], tuple[float, float]] = {}
    for rate in sorted({r.rate for r in rounds}, reverse=True):
        for variant, label in VARIANTS.items():
            rs = [r for r in rounds if r.rate == rate and r.variant == variant]
            if not rs:
                continue
            missing += sum(r.missing for r in rs)
            failed = sum(r.failed for r in rs)
            p50 = statistics.median(r.pct(0.50) for r in rs)
            p99 = statistics.median(r.pct(0.99) for r in rs)
            medians[variant, rate] = p50, p99
            peak = max(max(r.latencies_ms) for r in rs)
            each = "; ".join(f"{r.pct(0.5):.1f} / {r.pct(0.99):.1f} / {max(r.latencies_ms):.1f}" for r in rs)
            print(f"  {label:<14} {rate:>8,} {len(rs[0].latencies_ms):>7,} "
                  f"{statistics.median(r.achieved for r in rs):>9,.0f} {p50:>7.1f} {p99:>7.1f} {peak:>7.1f}  {each}")
            if failed:
                print(f"  {'':<14} {'':>8} {failed} publish() calls failed (not timed)")
    for rate in sorted({r.rate for r in rounds}, reverse=True):
        if ("eventq", rate) in medians and ("raw", rate) in medians:
            (e50, e99), (r50, r99) = medians["eventq", rate], medians["raw", rate]
            print(f"  at {rate:,}/s eventq - raw: p50 {e50 - r50:+.1f} ms, p99 {e99 - r99:+.1f} ms "
                  f"({e50 / r50:.2f}x / {e99 / r99:.2f}x)")
        for name, goal in GOALS.get(rate, {}).items():
            if ("eventq", rate) not in medians:
                continue
            value = medians["eventq", rate][0 if name == "p50" else 1]
            print(f"  goal (issue 14): eventq {name} <= {goal:g} ms at {rate:,}/s: "
                  f"{value:.1f} ms, {'met' if value <= goal else 'not met'}")
    print(f"  (producer: eventq publish(), linger_ms={linger_ms}; publisher and daemon in one process)")
    if missing:
        print(f"FAILED: {missing} published events were not handled within the timeout")
    return 1 if missing else 0


async def main_async(args: argparse.Namespace) -> int:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench")
    rates = [int(r) for r in args.rates.split(",")]
    given_url = os.environ.get("EVENTQ_DATABASE_URL")
    server_url = given_url or DEFAULT_DATABASE_URL
    name, database_url = (None, given_url) if given_url else await create_database(server_url)
    linger_ms = args.linger_ms if args.linger_ms is not None else ProducerSettings().linger_ms
    try:
        await sql(database_url, None)
        print(f"latency benchmark: publish() at {', '.join(f'{r:,}' for r in rates)} events/s for {args.seconds:g} s "
              f"each (after {args.warmup:g} s of warm-up), median of {args.repeat}", flush=True)
        tune_gc_for_daemon()  # this process is the daemon, as under eventq consume
        rounds = [await measure(args, kafka, database_url, rate, variant)
                  for _ in range(args.repeat) for rate in rates for variant in VARIANTS]
        return report(rounds, linger_ms)
    finally:
        if name is None:
            await sql(database_url, "DELETE FROM processed_events WHERE consumer_group LIKE 'bench.latency.%'")
        else:
            await sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,100", help="events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per rate and round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the rate before timing")
    parser.add_argument("--repeat", "--repeats", type=int, default=3)
    parser.add_argument("--linger-ms", type=int, default=None, help="the producer's linger (default: its default)")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("EVENTQ_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    args = parser.parse_known_args()[0]  # (run.py passes every benchmark the same arguments)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
