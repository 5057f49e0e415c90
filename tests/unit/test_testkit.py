"""eventq.testing's own promises, without a broker or database: waits switched off but reported, retry-topic hops,
refusals that say what to do (no database, undeclared topics, endless feeds), the pytest fixture."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from eventq import App, ConsumerSettings, Context, Event, RetryLater
from eventq.errors import ConfigError, SchemaViolation
from eventq.testing import DatabaseRequired, NotIdle, TestKit
from eventq.testing.pytest_plugin import configured_url
from eventq.wire import DLT_NULL_VALUE
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS

CREATED = "demo.order.created.v1"
EXACT = ConsumerSettings(backoff_initial_s=1000.0, backoff_max_s=4000.0, backoff_jitter=0.0, max_attempts=3)


def order(n: int = 1, key: str = "customer-1") -> Event:
    return Event(type=CREATED, source="tests", key=key,
                 data={"order_id": f"o-{n}", "customer_id": "c", "amount_cents": n, "currency": "EUR"})


def new_app() -> App:
    return App("kit-tests", topics=["orders"], schemas=DEMO_SCHEMAS)


@pytest.mark.timeout(60)  # the back-off below is 1,000 s and more: waited for, it would time the test out
async def test_back_off_is_reported_not_waited_for() -> None:
    """A failing event's back-off delays are reported exactly (1000 s, 2000 s) while the kit does not wait them."""
    app = new_app()

    @app.handler(CREATED)
    async def broken(event: Event, ctx: Context) -> None:
        raise RuntimeError(f"attempt {ctx.attempt}")

    placed = order()
    async with TestKit(app, EXACT) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    result = kit.outcome(placed)
    assert (result.status, result.attempts, result.delays) == ("dead_lettered", 3, (1000.0, 2000.0))
    assert [str(e) for e in result.errors] == ["attempt 1", "attempt 2", "attempt 3"]
    assert result.dead_letter is not None and result.dead_letter.reason == "exhausted"


async def test_retry_later_delay_is_the_handlers() -> None:
    """RetryLater's own delay is the one reported, and the next attempt succeeds."""
    app = new_app()

    @app.handler(CREATED)
    async def later(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RetryLater(7.5)

    placed = order()
    async with TestKit(app, EXACT) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    assert (kit.outcome(placed).status, kit.outcome(placed).delays) == ("handled", (7.5,))


async def test_retry_topic_hops_are_records_of_their_own() -> None:
    """A retry_topics handler's failures go through orders.retry.1 and .2; the history shows each hop."""
    app = new_app()

    @app.handler(CREATED, retry_topics=True)
    async def flaky(event: Event, ctx: Context) -> None:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    placed = order()
    async with TestKit(app, EXACT) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    assert [(o.status, o.record.topic, o.retry_topic) for o in kit.history(placed)] == [
        ("retry_handed_off", "orders", "orders.retry.1"),
        ("retry_handed_off", "orders.retry.1", "orders.retry.2"),
        ("handled", "orders.retry.2", None),
    ]
    assert kit.outcome(placed).attempts == 3
    assert [(row.topic, row.offset, row.outcome) for row in kit.rows] == [("orders", 0, "handled")]


async def test_transactional_handler_without_a_database_is_refused() -> None:
    """A transactional handler in a kit without a database raises DatabaseRequired naming it; the record stays."""
    app = new_app()

    @app.handler(CREATED, transactional=True)
    async def book(event: Event, ctx: Context) -> None:
        pass

    async with TestKit(app) as kit:
        kit.feed(order())
        with pytest.raises(DatabaseRequired, match=r"book is transactional=True.*database_url="):
            await kit.run_until_idle()
        assert kit.outcomes == []
        with pytest.raises(DatabaseRequired):  # still there: not consumed
            await kit.run_until_idle()


async def test_ctx_db_without_a_database_is_refused() -> None:
    """A plain handler that touches ctx.db in a kit without a database fails the run with DatabaseRequired."""
    app = new_app()

    @app.handler(CREATED)
    async def query(event: Event, ctx: Context) -> None:
        await ctx.db.execute("SELECT 1")

    async with TestKit(app) as kit:
        kit.feed(order())
        with pytest.raises(DatabaseRequired, match=r"ctx\.db\.execute"):
            await kit.run_until_idle()


async def test_publishing_to_an_undeclared_topic_fails_as_on_a_broker() -> None:
    """ctx.publish to a topic the kit does not have fails the handler with TopicNotFound, as the real producer does."""
    app = new_app()

    @app.handler(CREATED)
    async def forward(event: Event, ctx: Context) -> None:
        await ctx.publish(order(2), topic="nowhere")

    placed = order()
    async with TestKit(app, EXACT) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    letter = kit.outcome(placed).dead_letter
    assert letter is not None and letter.error_type == "eventq.errors.TopicNotFound"
    assert kit.published == []


async def test_follow_ups_carry_correlation_and_causation() -> None:
    """A follow-up published while handling an event has its correlation id and, as causation id, its id."""
    app = new_app()

    @app.handler(CREATED)
    async def forward(event: Event, ctx: Context) -> None:
        await ctx.publish(order(2), topic="shipments")

    placed = Event(type=CREATED, source="tests", data=order().data, correlation_id="c-42")
    async with TestKit(app, topics=["shipments"]) as kit:
        kit.feed(placed)
        await kit.run_until_idle()
    [follow_up] = kit.follow_ups(placed)
    assert (follow_up.correlation_id, follow_up.causation_id) == ("c-42", placed.id)
    assert [f.topic for f in kit.published] == ["shipments"]


async def test_a_handler_feeding_its_own_topic_forever_is_stopped() -> None:
    """A handler that publishes a new event to its own topic for every event makes run_until_idle raise NotIdle."""
    app = new_app()

    @app.handler(CREATED)
    async def echo(event: Event, ctx: Context) -> None:
        await ctx.publish(order(), topic="orders")

    async with TestKit(app, max_rounds=5) as kit:
        kit.feed(order())
        with pytest.raises(NotIdle, match="5 rounds"):
            await kit.run_until_idle()


async def test_bad_input_outcomes() -> None:
    """An invalid payload says why (SchemaViolation); a tombstone's letter has an empty value and the null marker;
    with on_unknown_type=skip an unknown type gets a skipped row."""
    app = new_app()

    @app.handler(CREATED)
    async def fine(event: Event, ctx: Context) -> None:
        pass

    bad = order()
    bad.data["currency"] = "euro"
    stranger = Event(type="demo.unknown.v1", source="tests", data={})
    async with TestKit(app, ConsumerSettings(on_unknown_type="skip")) as kit:
        kit.feed(bad, stranger)
        kit.feed_record(None)
        await kit.run_until_idle()
    invalid, skipped, tombstone = kit.outcomes
    assert invalid.status == "dead_lettered" and isinstance(invalid.invalid, SchemaViolation)
    assert skipped.status == "skipped"
    assert tombstone.dead_letter is not None and tombstone.dead_letter.value == b""
    assert (DLT_NULL_VALUE, b"true") in tombstone.dead_letter.headers
    assert [row.outcome for row in kit.rows] == ["skipped", "dead_lettered"]


async def test_keys_spread_over_partitions_and_keep_their_order() -> None:
    """With partitions=3 each key keeps to one partition (Kafka's murmur2) and its events run in order."""
    app = new_app()
    seen: list[tuple[str | None, int]] = []

    @app.handler(CREATED)
    async def note(event: Event, ctx: Context) -> None:
        seen.append((event.key, event.data["amount_cents"]))

    events = [order(n, key=f"k{n % 4}") for n in range(20)]
    async with TestKit(app, partitions=3) as kit:
        kit.feed(*events)
        await kit.run_until_idle()
    for key in ("k0", "k1", "k2", "k3"):
        assert [n for k, n in seen if k == key] == [n for n in range(20) if f"k{n % 4}" == key]
        assert len({o.record.partition for o in kit.outcomes if o.event and o.event.key == key}) == 1
    assert len({o.record.partition for o in kit.outcomes}) > 1


async def test_misuse_says_what_to_do() -> None:
    """A kit not started, an App without topics, and an unprocessed event each raise a message saying what to do."""
    app = new_app()

    @app.handler(CREATED)
    async def fine(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(RuntimeError, match="async with TestKit"):
        await TestKit(app).run_until_idle()
    with pytest.raises(ConfigError, match="no topics to consume"):
        TestKit(App("no-topics"))
    async with TestKit(app) as kit:
        with pytest.raises(LookupError, match="run_until_idle"):
            kit.outcome(order())


def test_fixture_makes_kits_with_the_configured_database(
    eventq_kit: Callable[..., TestKit], eventq_database_url: str | None,
) -> None:
    """The eventq_kit fixture builds TestKits whose database URL is the plugin's (--eventq-database-url, env)."""
    app = new_app()

    @app.handler(CREATED)
    async def fine(event: Event, ctx: Context) -> None:
        pass

    kit = eventq_kit(app, partitions=2)
    assert (kit.database_url, kit.topics.partitions) == (eventq_database_url, 2)
    assert eventq_kit(app, database_url="postgresql://elsewhere/db").database_url == "postgresql://elsewhere/db"


async def test_hostile_records_get_outcomes_not_crashes() -> None:
    """A header without a value is carried through; a header name that was not UTF-8 is undecodable; a value that is
    no JSON is invalid: each gets an outcome and a letter where due, and the run completes."""
    app = new_app()

    @app.handler(CREATED)
    async def fine(event: Event, ctx: Context) -> None:
        pass

    async with TestKit(app) as kit:
        [good] = kit.feed(order())
        kit.feed_record(good.value, key=good.key, headers=[*good.headers, ("x-empty", None)])
        kit.feed_record(b"{}", headers=[("bad-\udcff-name", b"v")])
        kit.feed_record(b"\x00\xff" * 100)
        await kit.run_until_idle()
    assert [o.status for o in kit.outcomes] == ["handled", "duplicate", "dead_lettered", "dead_lettered"]
    assert [letter.reason for letter in kit.dead_letters] == ["undecodable", "invalid"]


async def test_an_unreachable_database_is_one_clear_error_without_the_password() -> None:
    """A database URL nothing answers at fails start with DatabaseRequired saying what to check, never the password."""
    app = new_app()

    @app.handler(CREATED)
    async def fine(event: Event, ctx: Context) -> None:
        pass

    kit = TestKit(app, database_url="postgresql://u:hunter2-secret@127.0.0.1:1/db")
    with pytest.raises(DatabaseRequired, match="cannot connect to its database") as raised:
        await kit.start()
    assert "hunter2" not in str(raised.value)


def test_the_plugin_takes_the_option_then_the_environment() -> None:
    """--eventq-database-url wins over EVENTQ_TEST_DATABASE_URL; with neither (or empty ones) kits get no database."""
    env = {"EVENTQ_TEST_DATABASE_URL": "postgresql://from-env/db"}
    assert configured_url("postgresql://from-option/db", env) == "postgresql://from-option/db"
    assert configured_url(None, env) == "postgresql://from-env/db"
    assert configured_url("", {"EVENTQ_TEST_DATABASE_URL": ""}) is None
    assert configured_url(None, {}) is None
