"""Consumer throughput: the eventq daemon against a raw aiokafka loop and a naive consumer, same run.

One topic with 6 partitions is filled once with N ``demo.order.created.v1`` events
(keys spread over 5,000 customers; ~95-byte JSON payloads plus ~210 bytes of
CloudEvents headers). Each scenario then reads it
from the start with a fresh consumer group, in its own subprocess so that its peak
RSS is its own:

- **raw aiokafka**: ``getmany(max_records=500)`` and ``commit()`` per batch, nothing
  else. The ceiling for any aiokafka-based consumer.
- **naive**: what a hand-written at-least-once consumer does: per record, decode the
  envelope, INSERT its ``processed_events`` row (autocommit, one statement) and commit
  its offset. Only the first min(N, 3,000) events: it is slow.
- **eventq** (ordering=partition, the default) and **eventq key** (ordering=key):
  ``Consumer.run(until_idle=True)`` with a no-op handler and default settings, so the
  figures include decoding, schema validation, the dedupe query, recording the rows
  and committing. The process's garbage collector is tuned as ``eventq consume``
  tunes it (``eventq.cli.tune_gc_for_daemon``). Afterwards the group must have exactly N rows in processed_events.
- **eventq traced**: the same with tracing on: an SDK tracer provider sampling every
  span (the records carry a sampled ``traceparent``), a batch span processor and an
  exporter that drops the spans, so the figure is eventq's and the SDK's cost, not an
  exporter's. Goal (issue 5): at least 0.7x the untraced eventq run.
- **eventq traced 10%**: the same daemon (default, parent-based sampler) on a second
  topic whose publisher sampled one trace in ten (``TraceIdRatioBased(0.1)``): the
  consumer records the sampled journeys whole and the others not at all, which is how
  a busy service would run.

- **eventq stages** (``eventq-stages``): the eventq scenario with each stage timed
  (``StageClock``): the profile behind the ratios, in µs per event.

- **faststream**: a FastStream batch subscriber (``max_records=500``,
  ``AckPolicy.ACK``, pydantic bodies) with a hand-written dedupe, one SELECT and one
  INSERT per batch into a table of its own; what it does and does not do next to
  eventq is in benchmarks/faststream_peer.py.
- **eventq CLI** and **eventq --workers 2** (``cli-1``, ``cli-2``): the eventq scenario
  through ``eventq consume --until-idle --workers N`` (benchmarks/workers.py); peak RSS
  is the largest daemon process's. Goal (issue 14): at most 120 MB per daemon process.

The topic is filled with tracing on, so every record carries the ``traceparent`` of
its ``create`` span, as it would from a traced publisher.

Two rates are reported for every scenario. *wall* runs from creating the client to
its return (group join, and for eventq the idle check and shutdown, included);
*steady* from the first record's arrival to the last one's (eventq: first to last
handler call; naive: per record, before decoding; raw: first batch received to last
batch committed), which is what a long-running daemon sees. Peak RSS is the child's
own (VmHWM). One unmeasured raw pass warms the broker; then the scenarios take turns,
round after round, and the median of ``--repeat`` rounds is reported. The database
is a fresh one on the dev server (dropped at the end), or EVENTQ_DATABASE_URL if set
(only this run's rows are deleted from it).

    python benchmarks/consumer.py [--events 100000] [--repeat 3] [--scenarios raw,eventq,faststream,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import structlog  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from eventq.cli import tune_gc_for_daemon  # noqa: E402
from eventq.config import KafkaSettings  # noqa: E402
from eventq.consumers import App, Consumer, ConsumerSettings, Instruments  # noqa: E402
from eventq.database import DEFAULT_DATABASE_URL, DatabaseSettings  # noqa: E402
from eventq.kafka import create_topics  # noqa: E402
from eventq.migrations import migrate  # noqa: E402
from eventq.producers import Producer, ProducerSettings  # noqa: E402
from eventq.schemas import Event  # noqa: E402
from eventq.schemas.envelope import decode  # noqa: E402
from eventq.telemetry import Telemetry  # noqa: E402
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS  # noqa: E402

PARTITIONS = 6
CUSTOMERS = 5_000
CHUNK = 10_000  # events per publish_many call while filling the topic
NAIVE_MAX = 3_000
SCENARIOS = {
    "raw": "raw aiokafka", "naive": "naive consumer", "eventq": "eventq", "eventq-key": "eventq ordering=key",
    "eventq-traced": "eventq tracing on",
    "eventq-stages": "eventq, stages timed",
    "eventq-traced-10": "eventq traced 10%",
    "faststream": "FastStream batch",
    "cli-1": "eventq consume",
    "cli-2": "eventq --workers 2",
}
CHILDLESS = ("cli-1", "cli-2")  # run as the CLI's own processes (benchmarks/workers.py), not as a child of this file
GOAL_RSS_MIB = 120 * 1000**2 / 1024**2  # issue 14: 120 MB per daemon process
GOAL_TRACED_RATIO = 0.7
GOAL_RATE = 50_000
GOAL_RATIO = 0.4
INSERT = (
    'INSERT INTO processed_events (consumer_group, event_id, topic, partition, "offset", outcome) '
    "VALUES ($1, $2::uuid, $3, $4, $5, 'handled')"
)


def order(n: int) -> Event:
    customer = f"customer-{n % CUSTOMERS}"
    data = {"order_id": f"order-{n}", "customer_id": customer, "amount_cents": 1000 + n, "currency": "EUR"}
    return Event(type="demo.order.created.v1", source="bench", key=customer, data=data)


# -- child: one scenario, one fresh group; prints one JSON line -----------------------------


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux's ru_maxrss keeps the parent's peak across fork/exec; VmHWM does not."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """perf_counter at the start, at the first and at the latest tick; ticks counted."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = self.last = 0.0
        self.count = 0
        self.stages: dict[str, float] = {}

    def tick(self) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if not self.first:
            self.first = self.last


def raw_consumer(args: argparse.Namespace, group: str) -> AIOKafkaConsumer:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench")
    return AIOKafkaConsumer(
        args.topic, **kafka.client_kwargs(), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )


async def run_raw(args: argparse.Namespace, group: str, clock: Clock) -> int:
    consumer = raw_consumer(args, group)
    await consumer.start()
    try:
        n = 0
        while n < args.events:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if batches:
                clock.tick()
                n += sum(len(records) for records in batches.values())
                await consumer.commit()
        clock.tick()  # the last batch committed
        return n
    finally:
        await consumer.stop()


async def run_naive(args: argparse.Namespace, group: str, clock: Clock) -> int:
    conn = await asyncpg.connect(args.database_url)
    consumer = raw_consumer(args, group)
    await consumer.start()
    try:
        n = 0
        while n < args.events:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=500)).items():
                for r in records[: args.events - n]:
                    clock.tick()
                    event = decode(r.key, r.value, r.headers)
                    await conn.execute(INSERT, group, event.id, r.topic, r.partition, r.offset)
                    await consumer.commit({tp: r.offset + 1})
                    n += 1
        return n
    finally:
        await consumer.stop()
        await conn.close()


async def run_eventq(args: argparse.Namespace, group: str, clock: Clock) -> int:
    app = App(group, topics=[args.topic], schemas=DEMO_SCHEMAS)

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: object) -> None:
        clock.tick()

    settings = ConsumerSettings(
        kafka=KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench"),
        database=DatabaseSettings(url=args.database_url),
        group_id=group,
        topics=(args.topic,),
        ordering="key" if args.scenario == "eventq-key" else "partition",
        backoff_jitter=0.0,
    )
    provider = traced_provider() if args.scenario in ("eventq-traced", "eventq-traced-10") else None
    tune_gc_for_daemon()  # as `eventq consume` does
    stages = StageClock() if args.scenario == "eventq-stages" else None
    await Consumer(app, settings, telemetry=Telemetry(tracer_provider=provider), instruments=stages).run(
        until_idle=True
    )
    if stages is not None:
        clock.stages = stages.microseconds(clock.count)
    if provider is not None:
        provider.shutdown()
    return clock.count


class StageClock(Instruments):
    """Wall time per stage, through the instruments seam plus timers around the stage functions.

    decode and dedupe marking and handle run on the event loop without waiting (a no-op
    handler), so their time is CPU; the dedupe query, record and commit wait on
    PostgreSQL and the broker, overlapping other partitions' work (the pipeline), so
    their sums can exceed the run's wall time.
    """

    def __init__(self) -> None:
        import eventq.consumers.daemon as daemon
        from eventq.consumers import commit, store

        self.totals: dict[str, float] = dict.fromkeys(
            ("decode", "dedupe query", "handle", "dead-letter+record", "commit"), 0.0
        )
        self._marks: dict[int, float] = {}

        def timed_sync(name: str, func: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return func(*a, **k)
                finally:
                    self.totals[name] += time.perf_counter() - t
            return wrapper

        def timed_async(name: str, func: Any) -> Any:
            async def wrapper(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await func(*a, **k)
                finally:
                    self.totals[name] += time.perf_counter() - t
            return wrapper

        setattr(daemon, "decode_items", timed_sync("decode", getattr(daemon, "decode_items")))  # noqa: B009, B010
        setattr(store, "finished", timed_async("dedupe query", store.finished))  # noqa: B010
        commit.Committer._commit = timed_async("commit", commit.Committer._commit)  # type: ignore[method-assign]

    def slice_started(self, sl: Any) -> None:
        self._marks[id(sl)] = time.perf_counter()

    async def after_handlers(self, sl: Any) -> None:
        now = time.perf_counter()
        self.totals["handle"] += now - self._marks[id(sl)]
        self._marks[id(sl)] = now

    async def after_record(self, sl: Any) -> None:
        self.totals["dead-letter+record"] += time.perf_counter() - self._marks.pop(id(sl))

    def microseconds(self, events: int) -> dict[str, float]:
        return {name: total * 1e6 / max(1, events) for name, total in self.totals.items()}


def traced_provider(ratio: float | None = None) -> TracerProvider:
    """Tracing on, every span (or new traces at ``ratio``) sampled and processed, then dropped by the exporter."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=TraceIdRatioBased(ratio)) if ratio is not None else TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


async def run_faststream(args: argparse.Namespace, group: str, clock: Clock) -> int:
    import faststream_peer  # only this scenario needs FastStream (the bench extra)

    return await faststream_peer.run_faststream(args, group, clock)


async def child(args: argparse.Namespace) -> int:
    group = f"{args.topic}-{args.scenario}-{uuid.uuid4().hex[:6]}"
    run = {"raw": run_raw, "naive": run_naive, "faststream": run_faststream}.get(args.scenario, run_eventq)
    clock = Clock()
    n = await run(args, group, clock)
    ended = time.perf_counter()
    rows = None
    if args.scenario != "raw":
        conn = await asyncpg.connect(args.database_url)
        table = "faststream_processed_events" if args.scenario == "faststream" else "processed_events"
        rows = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE consumer_group = $1", group)
        await conn.close()
    result = {
        "events": n,
        "rows": rows,
        "wall": n / (ended - clock.start),
        "steady": n / (clock.last - clock.first) if clock.last > clock.first else float("nan"),
        "to_first_s": clock.first - clock.start,
        "rss_mib": peak_rss_mib(),
    }
    if clock.stages:
        result["stages_us"] = clock.stages
    print(json.dumps(result), flush=True)
    if n != args.events or rows not in (None, n):
        print(f"{args.scenario}: consumed {n} of {args.events} events, {rows} rows recorded", file=sys.stderr)
        return 1
    return 0


# -- parent: topic, database, rounds of subprocesses, report ----------------------------------


async def fill_topic(kafka: KafkaSettings, topic: str, events: int, sampled: float | None = None) -> None:
    """``events`` orders on a new topic, published with tracing on (``sampled``: that share of traces)."""
    await create_topics(kafka, [topic, f"{topic}.dlt"], partitions=PARTITIONS)  # the daemon's DLT, made up front
    provider = traced_provider(sampled)
    telemetry = Telemetry(tracer_provider=provider)
    settings = ProducerSettings(kafka=kafka, default_topic=topic, schemas=DEMO_SCHEMAS)
    async with Producer(settings, telemetry=telemetry) as producer:
        for i in range(0, events, CHUNK):
            (await producer.publish_many([order(n) for n in range(i, min(events, i + CHUNK))])).raise_for_failures()
    provider.shutdown()


async def delete_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def create_database(server_url: str) -> tuple[str, str]:
    name = f"eventq_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, urlsplit(server_url)._replace(path=f"/{name}").geturl()


async def sql(url: str, statement: str | None, *params: object) -> None:
    """Run one statement on ``url``; None migrates it."""
    conn = await asyncpg.connect(url)
    try:
        await (migrate(conn) if statement is None else conn.execute(statement, *params))
    finally:
        await conn.close()


def run_scenario(args: argparse.Namespace, scenario: str, topic: str, database_url: str) -> dict[str, Any]:
    if scenario in CHILDLESS:
        import workers

        return workers.run_cli(args, scenario, topic, database_url)
    events = min(args.events, NAIVE_MAX) if scenario == "naive" else args.events
    profile = f"/tmp/eventq-bench-{scenario}.prof" if scenario in (args.profile or "").split(",") else None
    command = [
        sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), __file__,
        "--scenario", scenario, "--topic", topic, "--events", str(events),
        "--database-url", database_url, "--bootstrap-servers", args.bootstrap_servers,
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=1800)
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"scenario {scenario} failed (exit {done.returncode}) without a result")
    result: dict[str, Any] = json.loads(lines[-1])
    result["failed"] = done.returncode != 0
    if profile:
        import pstats

        print(f"-- profile of {scenario} (cProfile, top 30 by own time; {profile}):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return result


def report(results: dict[str, list[dict[str, Any]]]) -> int:
    median = {s: {k: statistics.median(r[k] for r in rs) for k in ("wall", "steady", "to_first_s")}
              for s, rs in results.items()}
    print(f"  {'scenario':<22} {'events':>8} {'wall ev/s':>10} {'steady ev/s':>12} {'to 1st s':>9} {'peak RSS':>9}")
    for scenario, rs in results.items():
        m = median[scenario]
        print(f"  {SCENARIOS[scenario]:<22} {int(rs[0]['events']):>8,} {m['wall']:>10,.0f} {m['steady']:>12,.0f} "
              f"{m['to_first_s']:>9.2f} {max(r['rss_mib'] for r in rs):>5.0f} MiB")
        walls, steadies = (", ".join(f"{r[k]:,.0f}" for r in rs) for k in ("wall", "steady"))
        print(f"  {'':<22} rounds wall: {walls}; steady: {steadies}")
    print("ratios (wall / steady):")
    for scenario, bases in (("eventq", ("raw", "naive", "faststream")), ("eventq-key", ("raw", "naive")),
                            ("eventq-traced", ("raw", "eventq")), ("eventq-traced-10", ("raw", "eventq")),
                            ("faststream", ("raw",)), ("cli-1", ("eventq",)), ("cli-2", ("cli-1", "raw"))):
        for base in bases:
            if scenario not in median or base not in median:  # not selected with --scenarios
                continue
            w, s = (median[scenario][k] / median[base][k] for k in ("wall", "steady"))
            print(f"  {SCENARIOS[scenario]:<20} / {SCENARIOS[base]:<15} {w:>6.2f}x / {s:>6.2f}x")
    if "eventq-traced" in median and "eventq" in median:
        traced = median["eventq-traced"]["steady"] / median["eventq"]["steady"]
        print(f"goal (issue 5): tracing on >= {GOAL_TRACED_RATIO}x tracing off (steady): {traced:.2f}x, "
              f"{'met' if traced >= GOAL_TRACED_RATIO else 'not met'}")
    daemons = [s for s in ("eventq", "eventq-key", "cli-1", "cli-2") if s in results]
    if daemons:
        print(f"goal (issue 14): peak RSS <= {GOAL_RSS_MIB:.0f} MiB (120 MB) per daemon process under load")
        for scenario in daemons:
            peak = max(r["rss_mib"] for r in results[scenario])
            per = "; per daemon: " + ", ".join(" + ".join(f"{m:.0f}" for m in r["daemons_mib"]) for r in
                                                results[scenario]) if "daemons_mib" in results[scenario][0] else ""
            sup = [r["supervisor_mib"] for r in results[scenario] if r.get("supervisor_mib")]
            print(f"  {SCENARIOS[scenario]:<20} {peak:>5.0f} MiB: {'met' if peak <= GOAL_RSS_MIB else 'not met'}"
                  f"{per}{f'; supervisor {max(sup):.0f} MiB' if sup else ''}")
    if "raw" in median:
        print(f"goals (issue): >= {GOAL_RATE:,} events/s with {PARTITIONS} partitions, >= {GOAL_RATIO}x the raw loop")
    for scenario in ("eventq", "eventq-key"):
        if scenario not in median or "raw" not in median:
            continue
        for kind in ("wall", "steady"):
            rate, ratio = median[scenario][kind], median[scenario][kind] / median["raw"][kind]
            print(f"  {SCENARIOS[scenario]:<20} {kind:<6} {rate:>8,.0f} events/s: "
                  f"{'met' if rate >= GOAL_RATE else 'not met'}; {ratio:.2f}x raw: "
                  f"{'met' if ratio >= GOAL_RATIO else 'not met'}")
    if "eventq-stages" in results:
        rs = results["eventq-stages"]
        print("where an eventq event's time goes (wall µs per event per stage, median of rounds; "
              "handle includes the dedupe marking):")
        for name in rs[0].get("stages_us", {}):
            print(f"  {name:<20} {statistics.median(r['stages_us'][name] for r in rs):>7.1f}")
        print(f"  {'(whole run, steady)':<20} {1e6 / median['eventq-stages']['steady']:>7.1f}")
    failed = [s for s, rs in results.items() if any(r["failed"] for r in rs)]
    if failed:
        print(f"FAILED (events consumed or processed_events rows != events): {', '.join(failed)}")
    return 1 if failed else 0


def parent(args: argparse.Namespace) -> int:
    selected = [s for s in SCENARIOS if not args.scenarios or s in args.scenarios.split(",")]
    unknown = set(args.scenarios.split(",") if args.scenarios else ()) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench")
    topic = f"bench.consumer.{uuid.uuid4().hex[:10]}"
    given_url = os.environ.get("EVENTQ_DATABASE_URL")
    server_url = given_url or DEFAULT_DATABASE_URL
    name, database_url = (None, given_url) if given_url else asyncio.run(create_database(server_url))
    try:
        asyncio.run(sql(database_url, None))
        asyncio.run(fill_topic(kafka, topic, args.events))
        if "eventq-traced-10" in selected:
            asyncio.run(fill_topic(kafka, f"{topic}.sampled10", args.events, sampled=0.1))
        print(f"consumer benchmark: {args.events:,} events on {PARTITIONS} partitions "
              f"(naive: first {min(args.events, NAIVE_MAX):,}), median of {args.repeat}", flush=True)
        run_scenario(args, "raw", topic, database_url)  # warm-up, unmeasured
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in selected}
        for _ in range(args.repeat):
            for scenario in selected:
                source = f"{topic}.sampled10" if scenario == "eventq-traced-10" else topic
                results[scenario].append(run_scenario(args, scenario, source, database_url))
        return report(results)
    finally:
        asyncio.run(delete_topics(kafka, [topic, f"{topic}.dlt", f"{topic}.sampled10", f"{topic}.sampled10.dlt"]))
        if name is None:  # a given database: remove only this run's rows
            asyncio.run(sql(database_url, "DELETE FROM processed_events WHERE consumer_group LIKE $1", f"{topic}-%"))
            if "faststream" in selected:
                import faststream_peer

                asyncio.run(faststream_peer.delete_rows(database_url, f"{topic}-%"))
        else:
            asyncio.run(sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", "--repeats", type=int, default=3)
    parser.add_argument("--bootstrap-servers", default=os.environ.get("EVENTQ_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--scenarios", default="",
                        help=f"comma-separated, run in this file's order (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--profile", default="", help="comma-separated scenarios to run under cProfile (printed)")
    parser.add_argument("--scenario", choices=list(SCENARIOS), help=argparse.SUPPRESS)  # child process only
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_known_args()[0]  # (run.py passes every benchmark the same arguments)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)  # aiokafka's chatter while groups join and topics elect leaders
    if args.scenario:
        return asyncio.run(child(args))
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
