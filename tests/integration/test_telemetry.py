"""Traces, logs and metrics of one event's journey, against the real broker and database.

Spans go to the SDK's in-memory exporter of a tracer provider made for each test
(passed through :class:`eventq.Telemetry`, never set globally).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, Context
from eventq.dlq import Filters, replay
from eventq.errors import Reject
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.telemetry.logs import add_event_context
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import Reader, TopicFactory
from tests.integration.consumer_kit import consumer_settings, order, rows, run_until_idle

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER = "demo.order.created.v1"
PAID = "demo.order.paid.v1"


class Traces:
    """A tracer provider of the test's own, and what it recorded."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = Telemetry(tracer_provider=self.provider)

    def named(self, name: str, **attributes: Any) -> list[ReadableSpan]:
        return [
            s for s in self.exporter.get_finished_spans()
            if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
        ]

    def one(self, name: str, **attributes: Any) -> ReadableSpan:
        found = self.named(name, **attributes)
        everything = [(s.name, dict(s.attributes or {})) for s in self.exporter.get_finished_spans()]
        assert len(found) == 1, f"{len(found)} spans {name!r} {attributes} among {everything}"
        return found[0]


@pytest.fixture
def traces() -> Iterator[Traces]:
    recorded = Traces()
    yield recorded
    recorded.provider.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def linked(span: ReadableSpan) -> set[tuple[int, int]]:
    return {(link.context.trace_id, link.context.span_id) for link in span.links}


async def test_publish_handle_and_follow_up_share_one_trace_with_the_right_parents(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces
) -> None:
    """send → handle → follow-up send → its handle form one trace, each span the parent of the next."""
    topic = await new_topic(partitions=3)
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        data = {"order_id": event.data["order_id"], "amount_cents": 5}
        paid = Event(type=PAID, source="tests", key=event.key, data=data)
        await ctx.publish(paid, topic=ctx.topic)

    @app.handler(PAID)
    async def note(event: Event, ctx: Context) -> None:
        pass

    first = order(1, key="customer-7")
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=traces.telemetry
    ) as producer:
        await producer.publish(first, topic=topic)
    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings, telemetry=traces.telemetry)

    send = traces.one(f"send {topic}", **{tr.MESSAGE_ID: first.id})
    handle = traces.one(f"handle {ORDER}", **{tr.MESSAGE_ID: first.id})
    follow_send = traces.one(f"send {topic}", **{tr.EVENT_TYPE: PAID})
    follow_handle = traces.one(f"handle {PAID}")
    assert send.kind == SpanKind.PRODUCER and handle.kind == SpanKind.CONSUMER
    assert send.parent is None
    assert parent_of(handle) == ids(send)[1]
    assert parent_of(follow_send) == ids(handle)[1]
    assert parent_of(follow_handle) == ids(follow_send)[1]
    assert {ids(s)[0] for s in (send, handle, follow_send, follow_handle)} == {ids(send)[0]}
    # the follow-up's own ids say the same thing as the trace
    assert follow_handle.attributes is not None and follow_handle.attributes[tr.CONVERSATION_ID] == first.id
    attributes = dict(handle.attributes or {})
    landed = (await rows(database, settings.group_id or ""))
    offset = next(r["offset"] for r in landed if r["event_id"] == first.id)
    assert attributes == attributes | {
        tr.SYSTEM: "kafka", tr.DESTINATION: topic, tr.GROUP: settings.group_id, tr.OFFSET: offset,
        tr.KEY: "customer-7", tr.MESSAGE_ID: first.id, tr.EVENT_TYPE: ORDER, tr.CONVERSATION_ID: first.id,
        tr.OUTCOME: tr.HANDLED, tr.ATTEMPTS: 1, tr.HANDLER: attributes[tr.HANDLER],
    }
    assert attributes[tr.PARTITION] in {"0", "1", "2"}
    # the handle span links to its batch's process span, which links back to the event's creation
    process = next(s for s in traces.named(f"process {topic}") if linked(s) & {ids(send)})
    assert ids(process) in linked(handle)
    assert process.kind == SpanKind.CONSUMER and process.parent is None
    # ...and the commit of that slice links to it
    assert any(ids(process) in linked(commit) for commit in traces.named("commit"))


async def test_an_event_published_in_an_unsampled_trace_is_handled_without_spans_and_its_follow_up_stays_unsampled(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces
) -> None:
    """Under a parent-based sampler an unsampled event records no handle span; its follow-up stays unsampled."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])
    seen: dict[str, str | None] = {}

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        seen["first"] = event.traceparent
        paid = Event(type=PAID, source="tests", key=event.key, data={"order_id": "o-1", "amount_cents": 5})
        await ctx.publish(paid, topic=ctx.topic)

    @app.handler(PAID)
    async def note(event: Event, ctx: Context) -> None:
        seen["follow-up"] = event.traceparent

    unsampled = TracerProvider(sampler=ALWAYS_OFF)  # a publisher that sampled this trace out
    first = order(1, key="customer-7")
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=Telemetry(tracer_provider=unsampled)
    ) as producer:
        await producer.publish(first, topic=topic)
    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings, telemetry=traces.telemetry)

    assert traces.named(f"handle {ORDER}") == [] and traces.named(f"handle {PAID}") == []
    assert traces.named(f"send {topic}") == []  # the follow-up's send is a child of the unsampled handling
    first_tp, follow_tp = seen["first"], seen["follow-up"]
    assert first_tp is not None and follow_tp is not None
    assert not int(first_tp[-2:], 16) & 1 and not int(follow_tp[-2:], 16) & 1  # unsampled, both
    assert follow_tp.split("-")[1] == first_tp.split("-")[1]  # one trace id
    assert sorted(r["outcome"] for r in await rows(database, settings.group_id or "")) == ["handled", "handled"]


async def test_a_batch_span_links_every_event_and_each_handle_span_continues_its_event(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces
) -> None:
    """publish_many: one create span per event; the process spans link all of them, one link per event."""
    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        pass

    events = [order(n) for n in range(60)]
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=traces.telemetry
    ) as producer:
        (await producer.publish_many(events, topic=topic)).raise_for_failures()
    await run_until_idle(app, consumer_settings(kafka_settings, database, topic), telemetry=traces.telemetry)

    creates = {e.id: traces.one(f"create {topic}", **{tr.MESSAGE_ID: e.id}) for e in events}
    batch_send = traces.one(f"send {topic}", **{tr.BATCH_COUNT: 60})
    assert linked(batch_send) == {ids(span) for span in creates.values()}
    processes = traces.named(f"process {topic}")
    all_links = [link for p in processes for link in linked(p)]
    assert sorted(all_links) == sorted(ids(span) for span in creates.values())  # exactly one link per event
    assert all(p.attributes is not None and p.attributes[tr.BATCH_COUNT] == len(p.links) for p in processes)
    for event in events:
        handle = traces.one(f"handle {ORDER}", **{tr.MESSAGE_ID: event.id})
        assert parent_of(handle) == ids(creates[event.id])[1]
        assert ids(handle)[0] == ids(creates[event.id])[0]


async def test_a_dead_lettered_and_replayed_event_stays_in_its_original_trace(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces, read_topic: Reader
) -> None:
    """handle (retries) → dead-letter send → replay send → handle again: parent to child, one trace id."""
    topic = await new_topic(partitions=2)
    fixed = False

    def make_app() -> App:
        app = App("t", topics=[topic])

        @app.handler(ORDER)
        async def charge(event: Event, ctx: Context) -> None:
            if not fixed:
                raise ConnectionError("payment provider unreachable")

        return app

    declined = order(13)
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=traces.telemetry
    ) as producer:
        await producer.publish(declined, topic=topic)
    settings = consumer_settings(kafka_settings, database, topic, max_attempts=3)
    await run_until_idle(make_app(), settings, telemetry=traces.telemetry)

    send = traces.one(f"send {topic}", **{tr.MESSAGE_ID: declined.id})
    failed = traces.one(f"handle {ORDER}", **{tr.MESSAGE_ID: declined.id})
    assert failed.attributes is not None and failed.attributes[tr.OUTCOME] == tr.DEAD_LETTERED
    assert failed.attributes[tr.ATTEMPTS] == 3
    assert [e.name for e in failed.events] == [
        "exception", "retry_scheduled", "exception", "retry_scheduled", "exception", "dead_lettered",
    ]
    assert [(e.attributes or {})["attempt"] for e in failed.events if e.name == "retry_scheduled"] == [1, 2]
    assert not failed.status.is_ok
    dlt_send = traces.one(f"send {topic}.dlt")
    assert parent_of(dlt_send) == ids(failed)[1]
    # the dead letter names its send span, so a replay elsewhere can continue from it
    [letter] = await read_topic(f"{topic}.dlt", 1)
    headers = dict(letter.headers)
    assert dlt_send.context is not None
    assert headers["eventq-dlt-traceparent"].decode() == (
        f"00-{format_trace_id(ids(send)[0])}-{format_span_id(ids(dlt_send)[1])}-{dlt_send.context.trace_flags:02x}"
    )

    report = await replay(kafka_settings, f"{topic}.dlt", Filters(), telemetry=traces.telemetry)
    assert len(report.replayed) == 1
    run = traces.one(f"replay {topic}.dlt")
    assert run.parent is None and run.attributes is not None and run.attributes[tr.REPLAY_RUN] == report.run
    replay_send = traces.one(f"send {topic}", **{tr.OPERATION_NAME: "replay"})
    assert parent_of(replay_send) == ids(dlt_send)[1]
    assert linked(replay_send) == {ids(run)}

    fixed = True
    await run_until_idle(make_app(), settings, telemetry=traces.telemetry)
    again = next(s for s in traces.named(f"handle {ORDER}", **{tr.MESSAGE_ID: declined.id}) if s is not failed)
    assert parent_of(again) == ids(replay_send)[1]
    assert again.attributes is not None and again.attributes[tr.OUTCOME] == tr.HANDLED
    trace_id = ids(send)[0]
    assert {ids(s)[0] for s in (failed, dlt_send, replay_send, again)} == {trace_id}
    assert [r["outcome"] for r in await rows(database, settings.group_id or "")] == ["handled"]


async def test_skipped_duplicates_rejected_and_undecodable_records_are_visible_in_the_traces(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces
) -> None:
    """A duplicate gets a 'duplicate' span, a rejected event a dead_lettered one; a record that is no event
    is dead-lettered under the batch's process span, which itself stays a batch span (no outcome, no error)."""
    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        if event.data["order_id"] == "o-2":
            raise Reject("no such customer")

    kept, rejected = order(1), order(2)
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=traces.telemetry
    ) as producer:
        for event in (kept, rejected, kept):  # the same event twice: the second is a duplicate
            await producer.publish(event, topic=topic)
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await raw.start()
    try:
        await raw.send_and_wait(topic, b"not an event")
    finally:
        await raw.stop()
    await run_until_idle(app, consumer_settings(kafka_settings, database, topic), telemetry=traces.telemetry)

    outcomes = sorted(
        cast(str, (s.attributes or {})[tr.OUTCOME]) for s in traces.named(f"handle {ORDER}", **{tr.MESSAGE_ID: kept.id})
    )
    assert outcomes == [tr.DUPLICATE, tr.HANDLED]
    duplicate = traces.one(f"handle {ORDER}", **{tr.OUTCOME: tr.DUPLICATE})
    assert [e.name for e in duplicate.events] == ["duplicate_skipped"]
    reject = traces.one(f"handle {ORDER}", **{tr.MESSAGE_ID: rejected.id})
    assert reject.attributes is not None and reject.attributes[tr.OUTCOME] == tr.DEAD_LETTERED
    assert [e.name for e in reject.events] == ["exception", "dead_lettered"]
    assert reject.events[1].attributes is not None
    assert reject.events[1].attributes[tr.DEAD_LETTER_REASON] == "rejected"
    [process] = traces.named(f"process {topic}")
    assert process.attributes is not None and tr.OUTCOME not in process.attributes and process.status.is_ok
    parents = sorted(parent_of(s) or 0 for s in traces.named(f"send {topic}.dlt"))
    assert parents == sorted([ids(reject)[1], ids(process)[1]])


async def test_log_lines_from_handling_carry_the_event_and_the_active_span(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, traces: Traces
) -> None:
    """Handler and eventq log lines name the event, where it came from, and the handle span's ids."""
    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])
    plain = structlog.get_logger("billing")
    failures = 0

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        nonlocal failures
        ctx.log.info("billing.charging")
        plain.info("billing.plain_logger")
        if failures == 0:
            failures += 1
            raise ConnectionError("flaky")

    event = order(5, key="customer-5")
    async with Producer(
        ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=traces.telemetry
    ) as producer:
        await producer.publish(event, topic=topic)
    settings = consumer_settings(kafka_settings, database, topic)
    # add_event_context is annotated with dict where structlog's processors take a MutableMapping
    with structlog.testing.capture_logs(processors=[add_event_context]) as logs:
        await run_until_idle(app, settings, telemetry=traces.telemetry)

    handle = traces.one(f"handle {ORDER}")
    trace_id, span_id = format_trace_id(ids(handle)[0]), format_span_id(ids(handle)[1])
    expected = {
        "event_id": event.id, "event_type": ORDER, "correlation_id": event.id, "topic": topic, "partition": 0,
        "offset": 0, "consumer_group": settings.group_id, "trace_id": trace_id, "span_id": span_id,
    }
    lines = [line for line in logs if line["event"] in ("billing.charging", "billing.plain_logger",
                                                          "event.retry_scheduled")]
    assert sorted(line["event"] for line in lines) == [
        "billing.charging", "billing.charging", "billing.plain_logger", "billing.plain_logger",
        "event.retry_scheduled",
    ]
    for line in lines:
        assert line == {**line, **expected}, line
    started = next(line for line in logs if line["event"] == "consumer.started")
    assert "trace_id" not in started and "event_id" not in started


async def test_metrics_count_the_work_and_the_lag_returns_to_zero(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Consumed, duplicates, retries, dead letters and batch sizes are counted; /metrics serves them with the lag."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    topic = await new_topic(partitions=2)
    reader = InMemoryMetricReader()
    registry = CollectorRegistry()
    meters = MeterProvider(metric_readers=[reader, PrometheusMetricReader(registry=registry)])
    telemetry = Telemetry(meter_provider=meters, prometheus_registry=registry)
    app = App("t", topics=[topic])
    attempts = 0

    @app.handler(ORDER)
    async def charge(event: Event, ctx: Context) -> None:
        nonlocal attempts
        if event.data["order_id"] == "o-0":
            attempts += 1
            raise ConnectionError("down")

    events = [order(n) for n in range(40)]
    async with Producer(ProducerSettings(kafka=kafka_settings, schemas=DEMO_SCHEMAS), telemetry=telemetry) as producer:
        (await producer.publish_many([*events, events[7]], topic=topic)).raise_for_failures()
    settings = consumer_settings(kafka_settings, database, topic, max_attempts=2, health_port=0)
    daemon = Consumer(app, settings, telemetry=telemetry)
    running = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(60):
            while len(await rows(database, settings.group_id or "")) < 40 or (
                sorted(p.value for p in _points(reader, "eventq.consumer.lag")) != [0, 0]
            ):
                await asyncio.sleep(0.2)
            assert daemon.health is not None
            port = daemon.health.port
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            )
    finally:
        daemon.stop()
        await running
    try:
        assert _sum(reader, "messaging.client.sent.messages") == 41
        assert _sum(reader, "messaging.client.consumed.messages") == 41
        assert _sum(reader, "eventq.consumer.duplicates") == 1
        assert _sum(reader, "eventq.consumer.retries") == attempts - 1 == 1
        assert _sum(reader, "eventq.consumer.dead_lettered") == 1
        assert _points(reader, "eventq.consumer.dead_lettered")[0].attributes[tr.DEAD_LETTER_REASON] == "exhausted"
        assert sum(p.count for p in _points(reader, "eventq.consumer.batch.size")) >= 2  # at least a slice each
        slices = sum(p.count for p in _points(reader, "eventq.consumer.batch.size"))
        assert sum(p.count for p in _points(reader, "messaging.process.duration")) == slices
        assert sum(p.count for p in _points(reader, "messaging.client.operation.duration")) == 1  # one publish_many
        assert "eventq_consumer_lag" in text and "messaging_client_consumed_messages_total" in text
        lag_lines = [line for line in text.splitlines() if line.startswith("eventq_consumer_lag{")]
        assert len(lag_lines) == 2 and all(line.endswith(" 0.0") for line in lag_lines), lag_lines
    finally:
        meters.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
        if metric.name == name for point in metric.data.data_points
    ]


def _sum(reader: InMemoryMetricReader, name: str) -> float:
    return sum(getattr(p, "value", 0) for p in _points(reader, name))
