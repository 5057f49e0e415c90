"""Transactional outbox: adding events in a transaction, relay throughput, commit → handler latency.

Three parts, each against a baseline measured in the same run, on a fresh database of
the dev PostgreSQL (migrated, dropped at the end; EVENTQ_DATABASE_URL instead if set,
whose outbox is then emptied) and fresh 6-partition topics. Events are the consumer
benchmark's ``demo.order.created.v1`` orders (~95-byte JSON payloads, keys over 5,000
customers), built before the clock starts.

1. **add** — µs per event of transactions that add events with
   :class:`~eventq.outbox.Outbox`: ``add`` with 1 event per transaction and ``add_many``
   with 100 on one asyncpg connection, and ``add`` with 1 over 8 connections at once
   (``µs/event`` there is wall time / events); against the same transactions inserting
   an equivalent plain row per event (event id, type, key, JSON payload as ``jsonb``)
   into a table of the benchmark's own (one ``INSERT … VALUES``, or one ``INSERT …
   SELECT unnest(…)`` for 100): what eventq costs over "the app writes a row". Both
   include ``BEGIN`` and ``COMMIT`` (fsync on, as the dev server runs); eventq also
   validation, encoding, the per-key advisory lock and the ``NOTIFY``. ``Outbox.rows``
   (validation and encoding, no database) is timed alone too. The tables are emptied
   after every pass; variants take turns; median of ``--repeat`` rounds.
2. **relay** — the outbox is filled with ``--events`` events (``add_many`` in
   transactions of ``--batch-size``, not timed), then ``Relay.run(until_empty=True)``
   (``batch_size`` = ``--batch-size``) is timed from the call to its return, client
   start-up and shutdown included; against ``Producer.publish_many`` of the same events in
   chunks of ``--batch-size``, timed from opening the producer to closing it (so it
   includes validation and encoding, which the relay's rows had when they were added).
   Goal: relay ≥ 0.8× publish_many. The relay's fixed cost (the same call on an empty
   outbox) is printed too. ``--profile`` adds, after the timed rounds, one drain with
   each stage of the relay's rounds timed and one under cProfile.
3. **latency** — a writer *process* commits one event per transaction at ``--rate``
   a second, open-loop (each transaction queued at ``t0 + i / rate``, as
   benchmarks/latency.py paces its publisher, and taken by the first free one of 8
   connections held for the run: the schedule never waits for a commit); latency =
   handler start (or, raw, receipt) − the writer's clock read right after its
   ``COMMIT`` returned. Both read ``CLOCK_MONOTONIC`` (``time.monotonic_ns()``), one
   clock for every process of a Linux host which, unlike the wall clock, NTP never
   steps. The daemon, in this
   process: ``Consumer.run()``, default settings, GC tuned as ``eventq consume`` does.
   Warm-up until it has handled an event, then ``--warmup`` s at the rate, not
   counted. Goal: p99 ≤ 50 ms for ``outbox``. Variants (``--latency-variants``):

   - ``outbox``: writer → ``Outbox.add`` → a relay process (``eventq outbox relay``,
     default settings) → the eventq daemon;
   - ``outbox-raw`` (baseline): the same writer and relay, read by latency.py's raw
     aiokafka loop (``getmany`` + ``commit()``): the outbox path's share alone;
   - ``direct`` (not run by default): the writer commits a plain row, then calls
     ``Producer.publish()`` right after the commit (the dual write the outbox
     replaces), to the eventq daemon. At 1,000/s its records arrive one at a time and
     the daemon falls seconds behind (docs/benchmarks.md, Latency), so this measures
     that backlog, and its drain adds half a minute.

    python benchmarks/outbox.py [--parts add,relay,latency] [--events 50000] [--repeat 3] [--transactions 1000]
                                [--batch-size 1000] [--rate 1000] [--seconds 10] [--warmup 2]
                                [--latency-variants outbox,outbox-raw,direct] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import pstats
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
import structlog  # noqa: E402
from consumer import create_database, delete_topics, order, sql  # noqa: E402
from latency import raw_loop  # noqa: E402

from eventq.cli import tune_gc_for_daemon  # noqa: E402
from eventq.config import KafkaSettings  # noqa: E402
from eventq.consumers import App, Consumer, ConsumerSettings, Context  # noqa: E402
from eventq.database import DEFAULT_DATABASE_URL, DatabaseSettings  # noqa: E402
from eventq.kafka import create_topics  # noqa: E402
from eventq.outbox import Outbox, Relay, RelaySettings  # noqa: E402
from eventq.producers import Producer, ProducerSettings  # noqa: E402
from eventq.schemas import Event  # noqa: E402
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS  # noqa: E402

PARTITIONS = 6
PARTS = ("add", "relay", "latency")
GOAL_RELAY_RATIO = 0.8
GOAL_P99_MS = 50.0
WRITER_CONNECTIONS = 8
WRITER_GRACE_S = 10.0  # after the schedule's end, how long the writer works on transactions still queued
ADD_CONNECTIONS = 8
RECEIPT_TIMEOUT_S = 60.0
PLAIN = "bench_outbox_plain"
PLAIN_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PLAIN} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "event_id text NOT NULL, event_type text NOT NULL, key text, payload jsonb NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now())"
)
PLAIN_ONE = f"INSERT INTO {PLAIN} (event_id, event_type, key, payload) VALUES ($1, $2, $3, $4::jsonb)"
PLAIN_MANY = (
    f"INSERT INTO {PLAIN} (event_id, event_type, key, payload) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def plain_row(conn: asyncpg.Connection, e: Event) -> None:
    await conn.execute(PLAIN_ONE, e.id, e.type, e.key, orjson.dumps(e.data).decode())


# -- 1. adding events inside a transaction ----------------------------------------------------


Case = tuple[int, int]  # (events per transaction, connections)


async def add_pass(conns: list[asyncpg.Connection], outbox: Outbox, variant: str, per_tx: int,
                   events: list[Event]) -> float:
    """Seconds for len(events) events in transactions of ``per_tx``, spread over ``conns``; then empty the tables."""
    topic = "bench.outbox.add"
    chunks = iter([events[i : i + per_tx] for i in range(0, len(events), per_tx)])

    async def work(conn: asyncpg.Connection) -> None:
        for chunk in chunks:
            async with conn.transaction():
                if variant == "eventq" and per_tx == 1:
                    await outbox.add(conn, chunk[0], topic=topic)
                elif variant == "eventq":
                    await outbox.add_many(conn, chunk, topic=topic)
                elif per_tx == 1:
                    await plain_row(conn, chunk[0])
                else:
                    await conn.execute(PLAIN_MANY, [e.id for e in chunk], [e.type for e in chunk],
                                       [e.key for e in chunk], [orjson.dumps(e.data).decode() for e in chunk])

    started = time.perf_counter()
    await asyncio.gather(*(work(c) for c in conns))
    elapsed = time.perf_counter() - started
    await conns[0].execute(f"TRUNCATE eventq_outbox, {PLAIN}")
    return elapsed


def rows_pass(outbox: Outbox, events: list[Event], per_tx: int) -> float:
    """Seconds of ``Outbox.rows`` alone (validation, encoding, the row), no database."""
    started = time.perf_counter()
    for i in range(0, len(events), per_tx):
        outbox.rows(events[i : i + per_tx], topic="bench.outbox.add")
    return time.perf_counter() - started


async def part_add(args: argparse.Namespace, database_url: str) -> None:
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))
    n = args.transactions
    cases: dict[Case, list[Event]] = {
        (1, 1): [order(k) for k in range(n)],
        (100, 1): [order(k) for k in range(n * 10)],
        (1, ADD_CONNECTIONS): [order(k) for k in range(n)],
    }
    print(f"add: {n:,} transactions of 1 event, {n // 10:,} of 100 on one connection, {n:,} of 1 over "
          f"{ADD_CONNECTIONS} connections; median of {args.repeat}", flush=True)
    conns = [await asyncpg.connect(database_url) for _ in range(ADD_CONNECTIONS)]
    times: dict[tuple[str, Case], list[float]] = {(v, c): [] for c in cases for v in ("eventq", "plain", "rows")}
    try:
        await conns[0].execute(PLAIN_DDL)
        for (per_tx, connections), events in cases.items():  # warm-up: statement caches, the tables' first pages
            for variant in ("plain", "eventq"):
                await add_pass(conns[:connections], outbox, variant, per_tx, events[: len(events) // 10])
        for r in range(args.repeat):
            for case, events in cases.items():
                per_tx, connections = case
                for variant in ("eventq", "plain") if r % 2 == 0 else ("plain", "eventq"):
                    gc.collect()
                    times[variant, case].append(await add_pass(conns[:connections], outbox, variant, per_tx, events))
                times["rows", case].append(rows_pass(outbox, events, per_tx))
        await conns[0].execute(f"DROP TABLE {PLAIN}")
    finally:
        for conn in conns:
            await conn.close()
    print(f"  {'events per transaction':<26} {'eventq µs/ev':>13} {'plain row µs/ev':>16} {'ratio':>7} "
          f"{'overhead':>9} {'of it rows()':>13}  rounds eventq / plain")
    for case, events in cases.items():
        per_tx, connections = case
        e, p, o = ([t * 1e6 / len(events) for t in times[v, case]] for v in ("eventq", "plain", "rows"))
        em, pm = statistics.median(e), statistics.median(p)
        rounds = "; ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(e, p, strict=True))
        label = ("1 (add)" if per_tx == 1 else f"{per_tx} (add_many)") + (
            f", {connections} connections" if connections > 1 else "")
        print(f"  {label:<26} {em:>13.1f} {pm:>16.1f} {em / pm:>6.2f}x {em - pm:>9.1f} {statistics.median(o):>13.1f}"
              f"  {rounds}", flush=True)
    print("  (µs per event, wall; overhead = eventq - plain; rows() = Outbox.rows alone: validation, encoding, "
          "the row, no database; with 8 connections µs/ev is wall time / events, i.e. 1e6 / throughput)")


# -- 2. relay throughput ------------------------------------------------------------------


async def fresh_topic(kafka: KafkaSettings, prefix: str, created: list[str]) -> str:
    """A new topic, noted in ``created`` (deleted at the end: a cluster with many topics makes every
    full-metadata request, such as the daemons' broker probes, slower)."""
    name = f"bench.{prefix}.{uuid.uuid4().hex[:8]}"
    await create_topics(kafka, [name], partitions=PARTITIONS)
    created.append(name)
    return name


async def fill_outbox(database_url: str, topic: str, events: list[Event], chunk: int) -> float:
    """Empty the outbox, add ``events`` in transactions of ``chunk``; seconds taken."""
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE eventq_outbox")
        started = time.perf_counter()
        for i in range(0, len(events), chunk):
            async with conn.transaction():
                await outbox.add_many(conn, events[i : i + chunk], topic=topic)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def pending(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM eventq_outbox")
        return count
    finally:
        await conn.close()


def relay_settings(args: argparse.Namespace, kafka: KafkaSettings, database_url: str) -> RelaySettings:
    return RelaySettings(kafka=kafka, database=DatabaseSettings(url=database_url), batch_size=args.batch_size)


async def relay_drain(relay: Relay, database_url: str, n: int) -> float:
    started = time.perf_counter()
    await relay.run(until_empty=True)
    elapsed = time.perf_counter() - started
    left = await pending(database_url)
    if relay.relayed != n or left:
        raise RuntimeError(f"the relay published {relay.relayed:,} of {n:,} events; {left:,} rows left")
    return elapsed


async def publish_many_run(args: argparse.Namespace, kafka: KafkaSettings, topic: str, events: list[Event]) -> float:
    gc.collect()
    started = time.perf_counter()
    async with Producer(ProducerSettings(kafka=kafka, default_topic=topic, schemas=DEMO_SCHEMAS)) as producer:
        for i in range(0, len(events), args.batch_size):
            (await producer.publish_many(events[i : i + args.batch_size])).raise_for_failures()
    return time.perf_counter() - started


class StageClock(Relay):
    """A relay that notes the wall time of each stage of its rounds (``--profile`` only; private hooks)."""

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__(settings)
        self.spent = dict.fromkeys(("turn (fetch, chores)", "rebuild", "send_encoded", "settle (DELETE)"), 0.0)
        self.rounds = 0

    async def _turn(self) -> bool:
        t = time.perf_counter()
        relay_before = self.spent["rebuild"] + self.spent["send_encoded"] + self.spent["settle (DELETE)"]
        idle = await super()._turn()
        relay_after = self.spent["rebuild"] + self.spent["send_encoded"] + self.spent["settle (DELETE)"]
        self.spent["turn (fetch, chores)"] += time.perf_counter() - t - (relay_after - relay_before)
        return idle

    async def _relay(self, conn: asyncpg.Connection, rows: Any) -> None:
        self.rounds += 1
        t = time.perf_counter()
        send, settle = self._send, self._settle
        sending = 0.0

        async def timed_send(*a: Any, **kw: Any) -> Any:
            nonlocal sending
            s = time.perf_counter()
            try:
                return await send(*a, **kw)
            finally:
                sending += time.perf_counter() - s

        async def timed_settle(*a: Any, **kw: Any) -> Any:
            s = time.perf_counter()
            self.spent["rebuild"] += s - t - sending
            self.spent["send_encoded"] += sending
            try:
                return await settle(*a, **kw)
            finally:
                self.spent["settle (DELETE)"] += time.perf_counter() - s

        self._send, self._settle = timed_send, timed_settle  # type: ignore[method-assign]
        try:
            await super()._relay(conn, rows)
        finally:
            del self._send, self._settle


async def profile_relay(args: argparse.Namespace, kafka: KafkaSettings, database_url: str, events: list[Event],
                        created: list[str]) -> None:
    n = len(events)
    topic = await fresh_topic(kafka, "outbox.relay", created)
    await fill_outbox(database_url, topic, events, args.batch_size)
    clocked = StageClock(relay_settings(args, kafka, database_url))
    gc.collect()
    elapsed = await relay_drain(clocked, database_url, n)
    print(f"-- relay stages, one drain of {n:,} events in {clocked.rounds} rounds, {n / elapsed:,.0f} events/s "
          "(wall µs per event; one round's stages run one after another):")
    for stage, seconds in clocked.spent.items():
        print(f"     {stage:<22} {seconds * 1e6 / n:>7.1f}   ({seconds / elapsed:.0%})")
    print(f"     {'total':<22} {elapsed * 1e6 / n:>7.1f}")
    topic = await fresh_topic(kafka, "outbox.relay", created)
    await fill_outbox(database_url, topic, events, args.batch_size)
    relay = Relay(relay_settings(args, kafka, database_url))
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    elapsed = await relay_drain(relay, database_url, n)
    profiler.disable()
    print(f"-- relay drain under cProfile ({n / elapsed:,.0f} events/s; cProfile inflates call-heavy code), "
          "top 25 by own time:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)


async def part_relay(args: argparse.Namespace, kafka: KafkaSettings, database_url: str) -> None:
    created: list[str] = []
    try:
        await relay_rounds(args, kafka, database_url, created)
    finally:
        if created:
            await delete_topics(kafka, created)


async def relay_rounds(args: argparse.Namespace, kafka: KafkaSettings, database_url: str, created: list[str]) -> None:
    n = args.events
    events = [order(k) for k in range(n)]
    print(f"relay: {n:,} events, batch size {args.batch_size:,}, {PARTITIONS} partitions, median of {args.repeat}",
          flush=True)
    await sql(database_url, "TRUNCATE eventq_outbox")
    fixed = await relay_drain(Relay(relay_settings(args, kafka, database_url)), database_url, 0)
    warm = events[: n // 10]  # one unmeasured pass of each: the broker's JIT, PostgreSQL's caches
    await fill_outbox(database_url, await fresh_topic(kafka, "outbox.relay", created), warm, args.batch_size)
    await relay_drain(Relay(relay_settings(args, kafka, database_url)), database_url, len(warm))
    await publish_many_run(args, kafka, await fresh_topic(kafka, "outbox.direct", created), warm)
    relayed: list[float] = []
    direct: list[float] = []
    fills: list[float] = []
    for r in range(args.repeat):
        for variant in ("relay", "direct") if r % 2 == 0 else ("direct", "relay"):
            if variant == "relay":
                topic = await fresh_topic(kafka, "outbox.relay", created)
                fills.append(await fill_outbox(database_url, topic, events, args.batch_size))
                gc.collect()
                relayed.append(await relay_drain(Relay(relay_settings(args, kafka, database_url)), database_url, n))
            else:
                topic = await fresh_topic(kafka, "outbox.direct", created)
                direct.append(await publish_many_run(args, kafka, topic, events))
    relay_rate, direct_rate = n / statistics.median(relayed), n / statistics.median(direct)
    ratio = relay_rate / direct_rate
    print(f"  {'relay drain (Relay.run until_empty)':<44} {relay_rate:>9,.0f} events/s  "
          f"(rounds: {', '.join(f'{n / t:,.0f}' for t in relayed)})")
    print(f"  {'publish_many, chunks of ' + format(args.batch_size, ','):<44} {direct_rate:>9,.0f} events/s  "
          f"(rounds: {', '.join(f'{n / t:,.0f}' for t in direct)})")
    print(f"  filling the outbox (add_many, {args.batch_size:,} per transaction): "
          f"{n / statistics.median(fills):,.0f} events/s; relay start-up + shutdown on an empty outbox "
          f"{fixed * 1e3:.0f} ms (in the drain time)")
    print(f"  goal: relay >= {GOAL_RELAY_RATIO}x publish_many: {ratio:.2f}x, "
          f"{'met' if ratio >= GOAL_RELAY_RATIO else 'not met'}"
          f"{'' if ratio >= GOAL_RELAY_RATIO or args.profile else ' (--profile shows where the time goes)'}",
          flush=True)
    if args.profile:
        await profile_relay(args, kafka, database_url, events, created)


# -- 3. commit -> handler latency ---------------------------------------------------------------


async def writer(args: argparse.Namespace) -> None:
    """The writer process: transactions at ``--rate`` for warm-up + timed seconds; prints one JSON line.

    Open-loop: each transaction is queued at its time and taken by the first free one of
    ``WRITER_CONNECTIONS`` connections, each held for the whole run (a pool would add its
    reset query to every transaction)."""
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench-writer")
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))
    producer = Producer(ProducerSettings(kafka=kafka, default_topic=args.topic, schemas=DEMO_SCHEMAS))
    direct = args.child == "writer-direct"
    if direct:
        await producer.start()
    conns = [await asyncpg.connect(args.database_url) for _ in range(WRITER_CONNECTIONS)]
    warmup, timed = int(args.rate * args.warmup), int(args.rate * args.seconds)
    events = [order(n) for n in range(warmup + timed)]
    queue: asyncio.Queue[tuple[Event, bool, int] | None] = asyncio.Queue()
    committed: dict[str, int] = {}
    tx_ms: list[float] = []
    publishing: set[asyncio.Task[None]] = set()
    failed = 0

    def failure(event: Event, exc: BaseException) -> None:
        nonlocal failed
        failed += 1
        if failed == 1:
            print(f"writer: {type(exc).__name__}: {exc}", file=sys.stderr)
        committed.pop(event.id, None)

    async def publish(event: Event) -> None:
        try:
            await producer.publish(event)  # after the commit, its connection already free: the dual write
        except Exception as exc:  # noqa: BLE001 - counted, and the first one shown
            failure(event, exc)

    async def work(conn: asyncpg.Connection) -> None:
        while (item := await queue.get()) is not None:
            event, counted, queued = item
            try:
                async with conn.transaction():
                    if direct:
                        await plain_row(conn, event)
                    else:
                        await outbox.add(conn, event, topic=args.topic)
            except Exception as exc:  # noqa: BLE001 - counted, and the first one shown
                failure(event, exc)
                continue
            done = time.monotonic_ns()
            if counted:
                committed[event.id] = done
                tx_ms.append((done - queued) / 1e6)
            if direct:
                task = asyncio.create_task(publish(event))
                publishing.add(task)
                task.add_done_callback(publishing.discard)

    workers = [asyncio.create_task(work(c)) for c in conns]
    try:
        t0 = begun = time.perf_counter()
        begun_ns = time.monotonic_ns()
        for i, event in enumerate(events):
            if i == warmup:
                begun, begun_ns = time.perf_counter(), time.monotonic_ns()
            wait = t0 + i / args.rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.put_nowait((event, i >= warmup, time.monotonic_ns()))
        achieved = timed / (time.perf_counter() - begun)
        give_up = time.monotonic() + WRITER_GRACE_S  # a writer far behind the rate drops what it has not begun
        while not queue.empty() and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        abandoned = queue.qsize()
        while not queue.empty():
            queue.get_nowait()
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        await asyncio.gather(*publishing)
        commits = len(committed) / max(1e-9, (max(committed.values(), default=begun_ns) - begun_ns) / 1e9)
    finally:
        for conn in conns:
            conn.terminate()
        if direct:
            await producer.stop()
    print(json.dumps({"committed": committed, "achieved": achieved, "commits": commits, "failed": failed,
                      "abandoned": abandoned, "tx_ms": [pct(tx_ms, 0.5), pct(tx_ms, 0.99)] if tx_ms else [0, 0]}))


LATENCY_VARIANTS = {
    "outbox": "outbox -> eventq daemon",
    "outbox-raw": "outbox -> raw aiokafka",
    "direct": "publish() after commit",
}


async def latency_round(args: argparse.Namespace, kafka: KafkaSettings, database_url: str,
                        variant: str) -> dict[str, Any]:
    """One writer run through ``variant``; the writer's result plus ``latencies_ms`` and ``missing``."""
    topic = f"bench.outbox.latency.{uuid.uuid4().hex[:8]}"
    await create_topics(kafka, [topic, f"{topic}.dlt"], partitions=PARTITIONS)
    await sql(database_url, "TRUNCATE eventq_outbox")
    received: dict[str, int] = {}
    arrived = asyncio.Event()
    stopping = asyncio.Event()
    app = App(f"{topic}-group", topics=[topic], schemas=DEMO_SCHEMAS)

    @app.handler("demo.order.created.v1")
    async def handle(event: Event, ctx: Context) -> None:
        received[event.id] = time.monotonic_ns()
        arrived.set()

    if variant == "outbox-raw":  # latency.py's baseline loop: getmany + commit, receipt noted per record
        running = asyncio.create_task(raw_loop(kafka, topic, received, arrived, stopping))
        stop = stopping.set
    else:
        daemon = Consumer(app, ConsumerSettings(
            kafka=kafka, database=DatabaseSettings(url=database_url), group_id=f"{topic}-group", topics=(topic,),
            backoff_jitter=0.0,
        ))
        running = asyncio.create_task(daemon.run())
        stop = daemon.stop
    relay: asyncio.subprocess.Process | None = None
    if variant != "direct":
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eventq.cli", "--log-level", "WARNING", "outbox", "relay",
            "--bootstrap-servers", args.bootstrap_servers, "--database-url", database_url,
        )
    try:
        await until_handled(variant, kafka, database_url, topic, received, arrived, running)
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", "writer-direct" if variant == "direct" else "writer-outbox",
            "--topic", topic, "--database-url", database_url, "--bootstrap-servers", args.bootstrap_servers,
            "--rate", str(args.rate), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"the writer process failed (exit {child.returncode})")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        committed: dict[str, int] = result["committed"]
        deadline = time.monotonic() + RECEIPT_TIMEOUT_S
        while not all(i in received for i in committed) and time.monotonic() < deadline and not running.done():
            await asyncio.sleep(0.05)
    finally:
        stop()
        await running
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            if await relay.wait() != 0:
                print(f"  (the relay process exited with {relay.returncode})", file=sys.stderr)
        await delete_topics(kafka, [topic, f"{topic}.dlt"])
    result["variant"] = variant
    result["latencies_ms"] = [(received[i] - t) / 1e6 for i, t in committed.items() if i in received]
    result["missing"] = len(committed) - len(result["latencies_ms"])
    return result


async def until_handled(variant: str, kafka: KafkaSettings, database_url: str, topic: str, received: dict[str, int],
                        arrived: asyncio.Event, running: asyncio.Task[None]) -> None:
    """Send probe events one at a time until the daemon has handled one (group joined, relay running)."""
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS))
    conn = await asyncpg.connect(database_url)
    try:
        async with Producer(ProducerSettings(kafka=kafka, default_topic=topic, schemas=DEMO_SCHEMAS)) as producer:
            deadline = time.monotonic() + RECEIPT_TIMEOUT_S
            while not received:
                if running.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon handled nothing within {RECEIPT_TIMEOUT_S:.0f} s")
                if variant != "direct":
                    async with conn.transaction():
                        await outbox.add(conn, order(0), topic=topic)
                else:
                    await producer.publish(order(0))
                try:
                    await asyncio.wait_for(arrived.wait(), 0.5)
                except TimeoutError:
                    pass
    finally:
        await conn.close()


async def part_latency(args: argparse.Namespace, kafka: KafkaSettings, database_url: str) -> int:
    print(f"latency: one event per transaction at {args.rate:,}/s for {args.seconds:g} s (after {args.warmup:g} s "
          f"of warm-up), writer in its own process, {args.latency_repeat} round(s)", flush=True)
    if time.get_clock_info("perf_counter").implementation != time.get_clock_info("monotonic").implementation:
        raise RuntimeError("latency.py's raw loop notes perf_counter_ns(), the writer monotonic_ns(): "
                           "not the same clock here")
    tune_gc_for_daemon()  # this process is the daemon, as under eventq consume
    await sql(database_url, PLAIN_DDL)
    labels = {v: LATENCY_VARIANTS[v] for v in args.latency_variants.split(",")}
    rounds = [await latency_round(args, kafka, database_url, variant)
              for _ in range(args.latency_repeat) for variant in labels]
    await sql(database_url, f"DROP TABLE {PLAIN}")
    print(f"  {'variant':<24} {'events':>7} {'started/s':>9} {'commits/s':>9} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}  {'tx p50/p99 ms':>13}")
    medians: dict[str, tuple[float, float]] = {}
    missing = 0
    for variant, label in labels.items():
        done = [r for r in rounds if r["variant"] == variant and r["latencies_ms"]]
        for r in rounds:
            if r["variant"] == variant:
                missing += r["missing"]
        for r in done:
            lat = r["latencies_ms"]
            print(f"  {label:<24} {len(lat):>7,} {r['achieved']:>9,.0f} {r['commits']:>9,.0f} {pct(lat, 0.5):>7.1f} "
                  f"{pct(lat, 0.95):>7.1f} "
                  f"{pct(lat, 0.99):>7.1f} {max(lat):>7.1f}  {r['tx_ms'][0]:>6.1f}/{r['tx_ms'][1]:.1f}"
                  + (f"  ({r['failed']} transactions failed)" if r["failed"] else "")
                  + (f"  ({r['abandoned']:,} still queued {WRITER_GRACE_S:g} s after the schedule's end: dropped)"
                     if r["abandoned"] else ""))
            if r["commits"] < 0.9 * args.rate:
                print(f"  {'':<24} the writer committed {r['commits']:,.0f}/s, not {args.rate:,}/s: these figures "
                      "are not at the rate (machine too busy?)")
        if done:
            medians[variant] = (statistics.median(pct(r["latencies_ms"], 0.5) for r in done),
                                statistics.median(pct(r["latencies_ms"], 0.99) for r in done))
    print("  (started/s: transactions queued per second, open-loop; commits/s: timed commits / first queued to last "
          f"commit; tx: from queued, waiting for one of the writer's {WRITER_CONNECTIONS} connections included, "
          "to COMMIT returned)")
    for base in ("outbox-raw", "direct"):
        if "outbox" in medians and base in medians:
            (o50, o99), (b50, b99) = medians["outbox"], medians[base]
            print(f"  outbox -> eventq daemon vs {LATENCY_VARIANTS[base]}: p50 {o50 - b50:+.1f} ms, "
                  f"p99 {o99 - b99:+.1f} ms ({o50 / b50:.2f}x / {o99 / b99:.2f}x)")
    if "outbox" in medians:
        value = medians["outbox"][1]
        print(f"  goal: outbox commit -> handler p99 <= {GOAL_P99_MS:g} ms at {args.rate:,}/s: {value:.1f} ms, "
              f"{'met' if value <= GOAL_P99_MS else 'not met'}")
    if missing:
        print(f"FAILED: {missing} committed events were not handled within {RECEIPT_TIMEOUT_S:.0f} s")
    return 1 if missing else 0


async def main_async(args: argparse.Namespace) -> int:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, client_id="eventq-bench")
    parts = args.parts.split(",")
    given_url = os.environ.get("EVENTQ_DATABASE_URL")
    server_url = given_url or DEFAULT_DATABASE_URL
    name, database_url = (None, given_url) if given_url else await create_database(server_url)
    started = time.perf_counter()
    status = 0
    try:
        await sql(database_url, None)
        for part in PARTS:
            if part in parts:
                begun = time.perf_counter()
                if part == "add":
                    await part_add(args, database_url)
                elif part == "relay":
                    await part_relay(args, kafka, database_url)
                else:
                    status = await part_latency(args, kafka, database_url)
                print(f"  ({part}: {time.perf_counter() - begun:.0f} s)", flush=True)
    finally:
        if name is None:
            await sql(database_url, "TRUNCATE eventq_outbox")
            await sql(database_url, f"DROP TABLE IF EXISTS {PLAIN}")
        else:
            await sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"(outbox benchmark took {time.perf_counter() - started:.0f} s)")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: add, relay, latency")
    parser.add_argument("--events", type=int, default=50_000, help="events in the outbox for the relay drain")
    parser.add_argument("--repeat", "--repeats", type=int, default=3, help="rounds of add and relay")
    parser.add_argument("--transactions", type=int, default=1_000, help="add: transactions of one event")
    parser.add_argument("--batch-size", type=int, default=1_000, help="relay batch size = publish_many chunk")
    parser.add_argument("--rate", type=int, default=1_000, help="latency: transactions per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: timed seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="latency: seconds at the rate before timing")
    parser.add_argument("--latency-repeat", type=int, default=1, help="latency: rounds")
    parser.add_argument("--latency-variants", default="outbox,outbox-raw",
                        help=f"latency: comma-separated, of {', '.join(LATENCY_VARIANTS)}")
    parser.add_argument("--profile", action="store_true", help="relay: time its stages and cProfile one drain")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("EVENTQ_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--child", choices=("writer-outbox", "writer-direct"), help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_known_args()[0]  # (run.py passes every benchmark the same arguments)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        asyncio.run(writer(args))
        return 0
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown part {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    unknown = set(args.latency_variants.split(",")) - set(LATENCY_VARIANTS)
    if unknown:
        parser.error(f"unknown latency variant {', '.join(sorted(unknown))}; choose from {', '.join(LATENCY_VARIANTS)}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
