"""The README demo, end to end on the real broker and database.

1. Publish an order, a follow-up caused by it, and 1,000 more orders in one batch.
2. Run a consumer daemon (burst mode) whose handler "charges" each order; one order
   always fails (the payment provider declines it): it is retried with back-off and
   then dead-lettered, while every other event is handled once and recorded.
3. Show the dead letter as it sits in ``<topic>.dlt``.
4. "Fix" the handler (the provider now accepts the order), replay the dead letter with
   ``eventq.dlq.replay`` and run the daemon again: the order is charged (and its
   payment published as a follow-up event), its row turns from ``dead_lettered`` into
   ``handled``, and every event has exactly one row.
5. With a span file (the CLI writes one), print the declined order's trace: publish,
   the failed handling with its retries, the dead letter, the replay, the handling
   after it and the follow-up, all in one trace.

The demo's event types (``demo.order.created.v1``, ``demo.order.paid.v1``) are not eventq's:
their schemas live in :mod:`eventq_dev.demo.schemas`, and the demo declares them as a schema
source (:data:`SCHEMAS`) like any application would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, ConsumerSettings, Context
from eventq.database import DatabaseSettings, connect
from eventq.dlq import Filters, replay
from eventq.kafka import create_topics
from eventq.migrations import migrate
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event, caused_by

SOURCE = "eventq-demo"
GROUP = "demo-billing"
DECLINED_ORDER = "order-13"  # the payment provider declines this one, every time
SCHEMAS: tuple[str, ...] = ("eventq_dev.demo.schemas",)
"""The schema sources that declare the demo's event types (for ``schemas=`` and ``EVENTQ_SCHEMAS``)."""


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


def demo_app(topic: str, charged: dict[str, list[int]], *, fixed: bool = False) -> App:
    """The demo's handlers: charge orders (one is declined until ``fixed``), note payments."""
    app = App(GROUP, topics=[topic], schemas=SCHEMAS)

    @app.handler("demo.order.created.v1")
    async def charge(event: Event, ctx: Context) -> None:
        order_id = event.data["order_id"]
        if order_id == DECLINED_ORDER and not fixed:
            raise RuntimeError(f"payment provider declined {DECLINED_ORDER} (card expired)")
        charged.setdefault(event.key or "", []).append(int(order_id.split("-")[1]))
        if order_id == DECLINED_ORDER:  # (the others' payments are not announced, to keep the demo short)
            paid = Event(type="demo.order.paid.v1", source=SOURCE, key=event.key,
                         data={"order_id": order_id, "amount_cents": event.data["amount_cents"]})
            await ctx.publish(paid, topic=ctx.topic)

    @app.handler("demo.order.paid.v1")
    async def paid(event: Event, ctx: Context) -> None:
        ctx.log.info("demo.payment_noted", order_id=event.data["order_id"])

    return app


async def run_demo(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    *,
    topic: str,
    count: int,
    echo: Callable[[str], None],
    show_trace: Callable[[str], str | None] | None = None,
) -> None:
    """Publish ``count`` orders plus a follow-up, consume them with a daemon, check the guarantees.

    ``show_trace(event_id)`` returns the drawn trace of an event (None if there is none).
    """
    conn = await connect(database)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    echo(f"database     {database.safe_url}: {'migrated ' + str(applied) if applied else 'up to date'}")
    created = await create_topics(kafka, [topic], partitions=6)
    echo(f"topic        {topic}: {'created' if created else 'exists'} (6 partitions)")

    async with Producer(ProducerSettings.from_env(kafka=kafka, default_topic=topic, schemas=SCHEMAS)) as producer:
        first = _order(0)
        landed = await producer.publish(first)
        echo(f"publish      {first.type} {first.id} -> partition {landed.partition} offset {landed.offset}")
        # A follow-up published "while handling" the first: ids are inherited, not passed.
        with caused_by(first.id, first.correlation_id or first.id):
            paid = Event(type="demo.order.paid.v1", source=SOURCE, key=first.key,
                         data={"order_id": "order-0", "amount_cents": 1000})
        await producer.publish(paid)
        echo(f"follow-up    {paid.type} correlation={paid.correlation_id} causation={paid.causation_id}")
        orders = [_order(n) for n in range(1, count + 1)]
        started = time.perf_counter()
        report = await producer.publish_many(orders)
        elapsed = time.perf_counter() - started
        report.raise_for_failures()
        echo(f"publish_many {len(report.published)} events acknowledged in {elapsed:.3f}s "
             f"({len(report.published) / elapsed:,.0f} events/s)")

    ours = {first.id, paid.id, *(o.id for o in orders)}
    declined = next(o for o in [first, *orders] if o.data["order_id"] == DECLINED_ORDER)
    charged: dict[str, list[int]] = {}
    settings = ConsumerSettings(
        kafka=kafka, database=database, group_id=GROUP, topics=(topic,), max_attempts=3, backoff_initial_s=0.2,
    )
    echo(f"consume      daemon for group {GROUP} (burst mode); {DECLINED_ORDER} will fail 3 times")
    started = time.perf_counter()
    await Consumer(demo_app(topic, charged), settings).run(until_idle=True)
    echo(f"consume      caught up in {time.perf_counter() - started:.1f}s")

    letter = await _find_dead_letter(kafka, f"{topic}.dlt", declined.id)
    echo(f"dead letter  {topic}.dlt partition {letter['partition']} offset {letter['offset']}:")
    for name in ("ce_id", "eventq-dlt-topic", "eventq-dlt-offset", "eventq-dlt-reason", "eventq-dlt-attempts",
                 "eventq-dlt-error-type", "eventq-dlt-error-message"):
        echo(f"  {name:25} {letter['headers'].get(name, b'').decode()}")

    # Order per key is checked on the first pass: a replayed event arrives after its
    # key's later events by nature (the README says what order is and is not kept).
    in_order = all(s == sorted(s) for s in charged.values())
    keys = len(charged)
    charged_before = sum(len(v) for v in charged.values())
    echo(f"fix          the customer updated the card: {DECLINED_ORDER} will be accepted now")
    replayed = await replay(kafka, f"{topic}.dlt", Filters(correlation_id=declined.correlation_id))
    echo(f"replay       {replayed.summary()} [run {replayed.run}]")
    await Consumer(demo_app(topic, charged, fixed=True), settings).run(until_idle=True)
    echo(f"consume      charged {sum(len(v) for v in charged.values()) - charged_before} more order(s) "
         f"after the replay")

    conn = await connect(database)
    try:
        rows = await conn.fetch(
            "SELECT event_id::text AS id, outcome FROM processed_events WHERE consumer_group = $1 "
            "AND event_id = ANY($2::uuid[])", GROUP, list(ours),
        )
    finally:
        await conn.close()
    outcomes = {r["id"]: r["outcome"] for r in rows}
    handled = sum(1 for o in outcomes.values() if o == "handled")
    echo(f"recorded     {len(outcomes)}/{len(ours)} events in processed_events "
         f"({handled} handled, {len(outcomes) - handled} dead-lettered)")
    echo(f"per-key order kept for {keys} customers (first pass): {'yes' if in_order else 'NO'}")
    drawn = show_trace(declined.id) if show_trace is not None else None
    if drawn:
        echo(f"trace        of {DECLINED_ORDER} ({declined.id}), from the span file:")
        echo(drawn)
    if len(outcomes) != len(ours) or outcomes.get(declined.id) != "handled" or not in_order:
        raise SystemExit(1)


async def _find_dead_letter(
    kafka: KafkaSettings, topic: str, event_id: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        found = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if not batches and found is not None:
                break
            for records in batches.values():
                for record in records:
                    headers = {name: value for name, value in record.headers}
                    if headers.get("ce_id") == event_id.encode():
                        found = {"partition": record.partition, "offset": record.offset, "headers": headers}
        if found is None:
            raise SystemExit(f"no dead letter for {event_id} in {topic}")
        return found
    finally:
        await consumer.stop()

