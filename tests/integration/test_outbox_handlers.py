"""Transactional handlers' follow-ups go through the outbox: they commit with the handler's work or not at all."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections import Counter
from typing import Any

import asyncpg
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventq.config import KafkaSettings
from eventq.consumers import App, Context
from eventq.outbox import Added, Outbox, Relay
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from eventq.telemetry import Telemetry
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader, TopicFactory, read_to_end
from tests.integration.consumer_kit import consumer_settings, order, publish, rows, run_until_idle
from tests.integration.outbox_crash_worker import paying_app
from tests.integration.test_outbox import relay_settings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def setup_payments(database: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database)
    await conn.execute("CREATE TABLE payments (order_id text NOT NULL)")
    return conn


def follow_ups(records: list[Any]) -> Counter[str]:
    return Counter(orjson.loads(r.value)["order_id"] for r in records)


async def test_a_transactional_handlers_follow_ups_are_published_once_after_its_commit(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader,
) -> None:
    """Each handled order leaves one payment, one processed row and one follow-up (with the handled event as its
    cause); a redelivered copy adds nothing; until the relay runs, follow-ups wait in the outbox."""
    topic, paid = await new_topic(partitions=2), await new_topic(partitions=2)
    conn = await setup_payments(database)
    events = [order(n) for n in range(20)]
    await publish(kafka_settings, topic, [*events, events[4], events[11]])  # two redelivered copies
    settings = consumer_settings(kafka_settings, database, topic)
    app = paying_app(settings.group_id or "", topic, paid, crash_on=None)
    await run_until_idle(app, settings)
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox WHERE topic = $1", paid) == 20
    assert await read_topic(paid, 0, timeout_ms=500) == []  # nothing is sent by the handler itself
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    records = await read_topic(paid, 20)
    assert follow_ups(records) == Counter({f"o-{n}": 1 for n in range(20)})
    by_order = {e.data["order_id"]: e for e in events}
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        cause = by_order[orjson.loads(record.value)["order_id"]]
        assert headers["ce_causationid"] == cause.id and headers["ce_correlationid"] == cause.id
    assert Counter(r[0] for r in await conn.fetch("SELECT order_id FROM payments")) == Counter(
        {f"o-{n}": 1 for n in range(20)}
    )
    assert len(await rows(database, settings.group_id or "")) == 20
    await conn.close()


async def test_ctx_publish_in_a_transactional_handler_returns_added_and_validates_at_once(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """ctx.publish answers Added (queued in the transaction); an invalid follow-up fails the attempt and rolls back
    the handler's writes, so after the retries the event is dead-lettered with no payment and no follow-up."""
    topic = await new_topic(partitions=1)
    conn = await setup_payments(database)
    seen: list[Any] = []
    settings = consumer_settings(kafka_settings, database, topic, max_attempts=2)
    app = App(settings.group_id or "", topics=[topic])

    @app.handler("demo.order.created.v1", transactional=True)
    async def pay(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO payments VALUES ($1)", event.data["order_id"])
        amount = event.data["amount_cents"] if event.data["order_id"] != "o-1" else -5  # o-1: invalid follow-up
        seen.append(await ctx.publish(
            Event(type="demo.order.paid.v1", source="tests", data={"order_id": "x", "amount_cents": amount}),
            topic=topic + ".paid",
        ))

    await publish(kafka_settings, topic, [order(0), order(1)])
    await run_until_idle(app, settings)
    assert len(seen) == 1 and isinstance(seen[0], Added) and seen[0].topic == topic + ".paid"
    assert [r[0] for r in await conn.fetch("SELECT order_id FROM payments")] == ["o-0"]
    assert await conn.fetchval("SELECT count(*) FROM eventq_outbox") == 1
    outcomes = sorted(r["outcome"] for r in await rows(database, settings.group_id or ""))
    assert outcomes == ["dead_lettered", "handled"]
    await conn.close()


async def test_a_transactional_handler_killed_before_its_commit_leaves_no_follow_up_and_its_rerun_leaves_one(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """The process dies after the handler paid o-3 and published its follow-up, before the commit: nothing of that
    attempt remains; the next daemon handles o-3 once, so every order has one payment and one follow-up."""
    topic, paid = await new_topic(partitions=1), await new_topic(partitions=1)
    conn = await setup_payments(database)
    group = f"outbox-crash-{uuid.uuid4().hex[:8]}"
    await publish(kafka_settings, topic, [order(n) for n in range(6)])
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.outbox_crash_worker", topic, paid, group, database,
        env={**os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(worker.communicate(), 90)
    assert worker.returncode == 137, stderr.decode()[-2000:]
    added = [orjson.loads(r[0])["order_id"] for r in await conn.fetch(
        "SELECT value FROM eventq_outbox WHERE topic = $1", paid)]
    assert "o-3" not in added and "o-3" not in [r[0] for r in await conn.fetch("SELECT order_id FROM payments")]

    settings = consumer_settings(kafka_settings, database, topic, group_id=group)
    await run_until_idle(paying_app(group, topic, paid, crash_on=None), settings, timeout=90)
    await Relay(relay_settings(kafka_settings, database)).run(until_empty=True)
    records = await read_to_end(kafka_settings, paid)
    assert follow_ups(records) == Counter({f"o-{n}": 1 for n in range(6)})
    assert Counter(r[0] for r in await conn.fetch("SELECT order_id FROM payments")) == Counter(
        {f"o-{n}": 1 for n in range(6)}
    )
    await conn.close()


async def test_one_trace_runs_from_the_web_request_through_the_outbox_and_relay_to_the_handler(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """The create span (a child of the request's span) is stored with the row; the relay's send span links to it,
    and the consumer's handle span is its child: one trace id from request to handler."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    topic = await new_topic(partitions=1)
    outbox = Outbox(ProducerSettings(schemas=DEMO_SCHEMAS), telemetry=telemetry)
    event = order(1)
    conn = await asyncpg.connect(database)
    with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
        async with conn.transaction():
            await outbox.add(conn, event, topic=topic)
    await conn.close()
    await Relay(relay_settings(kafka_settings, database), telemetry=telemetry).run(until_empty=True)
    settings = consumer_settings(kafka_settings, database, topic)
    app = App(settings.group_id or "", topics=[topic])

    @app.handler("demo.order.created.v1")
    async def handle(e: Event, ctx: Context) -> None:
        pass

    await run_until_idle(app, settings, telemetry=telemetry)
    provider.shutdown()
    spans = exporter.get_finished_spans()
    create = next(s for s in spans if s.name == f"create {topic}")
    send = next(s for s in spans if s.name == f"send {topic}" and s.kind == SpanKind.PRODUCER)
    handle_span = next(s for s in spans if s.name == "handle demo.order.created.v1")
    trace_id = request.get_span_context().trace_id
    assert create.context is not None and create.parent is not None
    assert create.context.trace_id == trace_id and create.parent.span_id == request.get_span_context().span_id
    assert (create.attributes or {})["messaging.message.id"] == event.id
    assert [link.context.span_id for link in send.links] == [create.context.span_id]
    assert handle_span.context is not None and handle_span.parent is not None
    assert handle_span.context.trace_id == trace_id and handle_span.parent.span_id == create.context.span_id
