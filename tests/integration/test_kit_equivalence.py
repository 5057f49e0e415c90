"""The test kit is honest: each scenario's test body runs under eventq.testing and on the real broker and database,
and the same assertions about rows, dead letters (their headers included) and follow-ups hold for both."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from eventq import BatchContext, Context, Event, Reject, RetryLater
from eventq.config import KafkaSettings
from eventq.consumers import ConsumerSettings
from eventq.dlq.letters import Letter
from eventq.producers import ProducerSettings
from eventq.wire import (
    DLT_ATTEMPTS,
    DLT_ERROR_MESSAGE,
    DLT_ERROR_TYPE,
    DLT_FIRST_FAILURE,
    DLT_GROUP,
    DLT_HANDLER,
    DLT_LAST_FAILURE,
    DLT_OFFSET,
    DLT_PARTITION,
    DLT_REASON,
    DLT_STACKTRACE,
    DLT_TIMESTAMP,
    DLT_TOPIC,
)
from tests.conftest import TopicFactory
from tests.integration.consumer_kit import consumer_settings, order
from tests.integration.kit_runs import BrokerRun, KitRun, RawRecord, Run

# The README's consumer example is a script in examples/, not a package: what is tested is the file itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import billing  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

DLT_NAMES = [
    DLT_TOPIC, DLT_PARTITION, DLT_OFFSET, DLT_TIMESTAMP, DLT_GROUP, DLT_HANDLER, DLT_REASON, DLT_ATTEMPTS,
    DLT_FIRST_FAILURE, DLT_LAST_FAILURE, DLT_ERROR_TYPE, DLT_ERROR_MESSAGE, DLT_STACKTRACE,
]


def settings_for(kafka: KafkaSettings, database: str, topic: str, out: str) -> ConsumerSettings:
    """The daemon's settings in both runs: 3 attempts, quick exact back-off; follow-ups go to ``out`` by default."""
    return consumer_settings(kafka, database, topic, max_attempts=3, schemas=(),
                             producer=ProducerSettings(default_topic=out))


async def make_run(kind: str, new_topic: TopicFactory, kafka: KafkaSettings, database: str | None) -> Run:
    if kind == "broker":
        topic, out = await new_topic(1), await new_topic(1)
        assert database is not None
        return BrokerRun(topic, out, settings_for(kafka, database, topic, out), kafka, database)
    topic, out = f"kit-{uuid.uuid4().hex[:8]}", f"kit-out-{uuid.uuid4().hex[:8]}"
    settings = settings_for(kafka, database or "postgresql://unused", topic, out)
    return KitRun(topic, out, settings, database if kind == "kit+db" else None)


@pytest.fixture(params=["kit", "broker"])
async def run(
    request: pytest.FixtureRequest, new_topic: TopicFactory, kafka_settings: KafkaSettings, database: str,
) -> AsyncIterator[Run]:
    """The scenario runs on the kit (no database) and on the real broker and database."""
    r = await make_run(request.param, new_topic, kafka_settings, database if request.param == "broker" else None)
    yield r
    await r.close()


@pytest.fixture(params=["kit+db", "broker"])
async def run_db(
    request: pytest.FixtureRequest, new_topic: TopicFactory, kafka_settings: KafkaSettings, database: str,
) -> AsyncIterator[Run]:
    """The scenario runs on a kit with a real database and on the real broker and database."""
    r = await make_run(request.param, new_topic, kafka_settings, database)
    yield r
    await r.close()


def names(letter: Letter) -> list[str]:
    return [name for name, _ in letter.headers]


def check_letter(
    letter: Letter, run: Run, fed: RawRecord, *, offset: int, reason: str, attempts: int, handler: str,
    error_type: str,
) -> None:
    """A dead letter keeps the record as it arrived and adds exactly eventq's headers, saying where and why."""
    key, value, headers = fed
    assert (letter.key, letter.value) == (key, value)
    assert names(letter) == [name for name, _ in headers] + DLT_NAMES
    assert (letter.source_topic, letter.source_partition, letter.source_offset, letter.group) == (
        run.topic, 0, offset, run.group,
    )
    assert (letter.reason, letter.attempts, letter.handler or "", letter.error_type) == (
        reason, attempts, handler, error_type,
    )


def handler_name(func: Callable[..., object]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


async def test_success_publishes_a_correlated_follow_up(run: Run) -> None:
    """A handled event gets a handled row, and its follow-up carries its correlation id and, as causation, its id."""
    app = run.app()
    calls: list[str] = []

    @app.handler("demo.order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        calls.append(event.id)
        await ctx.publish(
            Event(type="demo.order.paid.v1", source="billing", key=event.key,
                  data={"order_id": event.data["order_id"], "amount_cents": 1}),
            topic=run.out_topic,
        )

    placed = order(1, correlation_id="corr-1")
    run.feed(placed)
    await run.run_until_idle(app)

    assert calls == [placed.id]
    assert await run.rows() == {placed.id: "handled"}
    assert await run.dead_letters() == []
    [paid] = await run.published()
    assert (paid.type, paid.key, paid.correlation_id, paid.causation_id) == (
        "demo.order.paid.v1", placed.key, "corr-1", placed.id,
    )


async def test_reject_dead_letters_at_once(run: Run) -> None:
    """Reject dead-letters its event after one attempt (reason rejected): the record kept, eventq's headers added."""
    app = run.app()
    calls: list[str] = []

    @app.handler("demo.order.created.v1")
    async def refuse(event: Event, ctx: Context) -> None:
        calls.append(event.id)
        raise Reject("customer is blocked")

    placed = order(2)
    [fed] = run.feed(placed)
    await run.run_until_idle(app)

    assert calls == [placed.id]
    assert await run.rows() == {placed.id: "dead_lettered"}
    [letter] = await run.dead_letters()
    check_letter(letter, run, fed, offset=0, reason="rejected", attempts=1, handler=handler_name(refuse),
                 error_type="eventq.errors.Reject")
    assert letter.error_message == "customer is blocked"


async def test_retry_later_runs_the_handler_again(run: Run) -> None:
    """RetryLater counts as an attempt and runs the handler again; the event then is handled and nothing is lettered."""
    app = run.app()
    calls: list[int] = []

    @app.handler("demo.order.created.v1")
    async def later(event: Event, ctx: Context) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater(0.2, "not yet")

    placed = order(3)
    run.feed(placed)
    await run.run_until_idle(app)

    assert calls == [1, 2]
    assert await run.rows() == {placed.id: "handled"}
    assert await run.dead_letters() == []


async def test_exhausted_retries_dead_letter_with_the_attempts(run: Run) -> None:
    """A handler that always fails runs max_attempts times, then its event is dead-lettered as exhausted."""
    app = run.app()
    calls: list[int] = []

    @app.handler("demo.order.created.v1")
    async def broken(event: Event, ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("ledger offline")

    first, second = order(4), order(5)
    fed = run.feed(first, second)
    await run.run_until_idle(app)

    assert calls == [1, 2, 3, 1, 2, 3]
    assert await run.rows() == {first.id: "dead_lettered", second.id: "dead_lettered"}
    letters = await run.dead_letters()
    assert [letter.event_id for letter in letters] == [first.id, second.id]
    for offset, letter in enumerate(letters):
        check_letter(letter, run, fed[offset], offset=offset, reason="exhausted", attempts=3,
                     handler=handler_name(broken), error_type="builtins.RuntimeError")
        assert letter.error_message == "ledger offline"
        assert "RuntimeError: ledger offline" in (letter.stacktrace or "")


async def test_unknown_type_is_dead_lettered_without_a_handler(run: Run) -> None:
    """An event no handler takes is dead-lettered as unknown-type (0 attempts, no handler), the others handled."""
    app = run.app()

    @app.handler("demo.order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        pass

    stranger = Event(type="demo.order.refunded.v1", source="tests", data={"order_id": "o-9"})
    placed = order(6)
    fed = run.feed(stranger, placed)
    await run.run_until_idle(app)

    assert await run.rows() == {stranger.id: "dead_lettered", placed.id: "handled"}
    [letter] = await run.dead_letters()
    check_letter(letter, run, fed[0], offset=0, reason="unknown-type", attempts=0, handler="",
                 error_type="eventq.errors.UnknownEventType")


async def test_invalid_payload_and_undecodable_records_are_dead_lettered(run: Run) -> None:
    """A payload its schema refuses, and a value that is no event, are dead-lettered as invalid; no handler runs."""
    app = run.app()
    calls: list[str] = []

    @app.handler("demo.order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        calls.append(event.id)

    bad = order(7)
    bad.data["amount_cents"] = -5  # the schema's minimum is 0
    fed_bad = run.feed(bad)[0]
    garbage = run.feed_record(b"\xff\xfe not json", key=b"k", headers=[("x-origin", b"elsewhere")])
    await run.run_until_idle(app)

    assert calls == []
    assert await run.rows() == {bad.id: "dead_lettered"}  # (the garbage has no event id: a letter, no row)
    first, second = await run.dead_letters()
    check_letter(first, run, fed_bad, offset=0, reason="invalid", attempts=0, handler="",
                 error_type="eventq.errors.SchemaViolation")
    check_letter(second, run, garbage, offset=1, reason="invalid", attempts=0, handler="",
                 error_type="eventq.errors.InvalidEvent")


async def test_duplicates_skip_their_handler(run: Run) -> None:
    """The same event twice in a batch, and again after it was recorded, runs its handler once: one row."""
    app = run.app()
    calls: list[str] = []

    @app.handler("demo.order.created.v1")
    async def on_created(event: Event, ctx: Context) -> None:
        calls.append(event.id)

    placed = order(8)
    run.feed(placed, placed)
    await run.run_until_idle(app)
    run.feed(placed)  # redelivered later (a producer retry, a replay of a handled event)
    await run.run_until_idle(app)

    assert calls == [placed.id]
    assert await run.rows() == {placed.id: "handled"}
    assert await run.dead_letters() == []


async def test_batch_handler_partial_failure(run: Run) -> None:
    """A batch handler's failures by event id: the rest are handled, a rejected one is lettered at once, a failing
    one is retried alone until exhausted."""
    app = run.app()
    calls: list[list[str]] = []
    events = [order(10 + n) for n in range(3)]
    ok, rejected, failing = events

    @app.batch_handler("demo.order.created.v1")
    async def in_bulk(batch: list[Event], ctx: BatchContext) -> dict[str, BaseException] | None:
        calls.append([e.id for e in batch])
        failures: dict[str, BaseException] = {}
        for e in batch:
            if e.id == rejected.id:
                failures[e.id] = Reject("bad order")
            elif e.id == failing.id:
                failures[e.id] = ValueError("cannot store")
        return failures or None

    fed = run.feed(*events)
    await run.run_until_idle(app)

    assert calls == [[ok.id, rejected.id, failing.id], [failing.id], [failing.id]]
    assert await run.rows() == {ok.id: "handled", rejected.id: "dead_lettered", failing.id: "dead_lettered"}
    first, second = await run.dead_letters()
    check_letter(first, run, fed[1], offset=1, reason="rejected", attempts=1, handler=handler_name(in_bulk),
                 error_type="eventq.errors.Reject")
    check_letter(second, run, fed[2], offset=2, reason="exhausted", attempts=3, handler=handler_name(in_bulk),
                 error_type="builtins.ValueError")


async def test_transactional_handler_writes_and_follow_ups_commit_together(run_db: Run) -> None:
    """A transactional handler that fails once leaves nothing of its first attempt; the second commits its write,
    its row and its follow-up (through the outbox), exactly once."""
    run = run_db
    app = run.app()
    url = run.database_url
    assert url is not None
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE charges (order_id text PRIMARY KEY)")
    finally:
        await conn.close()

    @app.handler("demo.order.created.v1", transactional=True)
    async def charge(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO charges VALUES ($1)", event.data["order_id"])
        await ctx.publish(
            Event(type="demo.order.paid.v1", source="billing", key=event.key,
                  data={"order_id": event.data["order_id"], "amount_cents": 1}),
            topic=run.out_topic,
        )
        if ctx.attempt == 1:
            raise RuntimeError("crashed after writing")

    placed = order(20)
    run.feed(placed)
    await run.run_until_idle(app)

    assert await run.rows() == {placed.id: "handled"}
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM charges") == 1
    finally:
        await conn.close()
    [paid] = await run.published()
    assert paid.causation_id == placed.id


async def test_the_readme_billing_example(run_db: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's billing App: an order is charged and paid, one in a currency it refuses is rejected, a warm-up
    retries, a ledger entry is booked in its transaction, a metrics sample without a value is exhausted."""
    run = run_db
    url = run.database_url
    assert url is not None
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(billing.LEDGER)
    finally:
        await conn.close()
    monkeypatch.setattr(billing, "PAID", run.out_topic)
    billing.payments.charged.clear()
    billing.payments.warming_up = 1  # the first charge is told to come back later
    eur, gbp = order(30), order(31)
    gbp.data["currency"] = "GBP"
    entry = Event(type="ledger.entry.v1", source="tests", data={"order_id": "o-30", "amount_cents": 30})
    good = Event(type="metrics.sample.v1", source="tests", data={"value": 1.5})
    empty = Event(type="metrics.sample.v1", source="tests", data={})
    fed = run.feed(eur, gbp, entry, good, empty)
    await run.run_until_idle(billing.app)

    assert billing.payments.charged == ["o-30"]
    assert await run.rows() == {
        eur.id: "handled", gbp.id: "dead_lettered", entry.id: "handled", good.id: "handled",
        empty.id: "dead_lettered",
    }
    rejected, exhausted = await run.dead_letters()
    check_letter(rejected, run, fed[1], offset=1, reason="rejected", attempts=1, handler="billing.charge",
                 error_type="eventq.errors.Reject")
    check_letter(exhausted, run, fed[4], offset=4, reason="exhausted", attempts=3, handler="billing.store_samples",
                 error_type="builtins.ValueError")
    conn = await asyncpg.connect(url)
    try:
        assert [tuple(r) for r in await conn.fetch("SELECT order_id, amount_cents FROM ledger")] == [("o-30", 30)]
    finally:
        await conn.close()
    [paid] = await run.published()
    assert (paid.type, paid.data, paid.causation_id) == ("demo.order.paid.v1", {"order_id": "o-30", "amount_cents": 30},
                                                         eur.id)
