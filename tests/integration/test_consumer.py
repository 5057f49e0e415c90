"""The consumer daemon against the real broker and PostgreSQL: handle, record, commit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Mapping

import asyncpg
import pytest

from eventq.config import KafkaSettings
from eventq.consumers import App, BatchContext, Consumer, Context, Instruments
from eventq.consumers.outcome import Slice
from eventq.consumers.store import Processed, record
from eventq.errors import Reject, RetryLater
from eventq.schemas import Event
from tests.conftest import Reader, TopicFactory, end_offsets, partitions_of
from tests.integration.consumer_kit import committed, consumer_settings, order, publish, rows, run_until_idle

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER = "demo.order.created.v1"


async def test_every_event_is_handled_once_recorded_once_and_committed_to_the_end(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """600 events over 6 partitions: each handler runs once, each gets one row, and offsets reach the end."""
    topic = await new_topic()
    events = [order(n) for n in range(600)]
    await publish(kafka_settings, topic, events)
    app = App("t", topics=[topic])
    calls: Counter[str] = Counter()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        calls[event.id] += 1

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert calls == Counter({e.id: 1 for e in events})
    recorded = await rows(database, settings.group_id or "")
    assert sorted(r["event_id"] for r in recorded) == sorted(e.id for e in events)
    assert {r["outcome"] for r in recorded} == {"handled"}
    ends = await end_offsets(kafka_settings, topic, nonempty=True)
    assert await committed(kafka_settings, settings.group_id or "", topic) == ends
    # the dead-letter topic was created alongside, with as many partitions as its source
    assert len(await partitions_of(kafka_settings, f"{topic}.dlt")) == 6


async def test_events_the_group_already_recorded_skip_their_handler(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Events with a processed_events row for the group are committed without running the handler."""
    topic = await new_topic()
    events = [order(n) for n in range(200)]
    await publish(kafka_settings, topic, events)
    settings = consumer_settings(kafka_settings, database, topic)
    conn = await asyncpg.connect(database)
    await record(conn, settings.group_id or "", [Processed(e.id, topic, 0, 0) for e in events[:120]])
    await conn.close()
    app = App("t", topics=[topic])
    handled: list[str] = []

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        handled.append(event.id)

    await run_until_idle(app, settings)

    assert sorted(handled) == sorted(e.id for e in events[120:])
    assert len(await rows(database, settings.group_id or "")) == 200
    ends = await end_offsets(kafka_settings, topic, nonempty=True)
    assert await committed(kafka_settings, settings.group_id or "", topic) == ends


async def test_a_poison_record_mid_batch_is_dead_lettered_and_the_rest_processed(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """Undecodable, schema-invalid and unknown-type records go to <topic>.dlt as they were; the rest is handled."""
    from aiokafka import AIOKafkaProducer

    from eventq.schemas.envelope import encode

    topic = await new_topic(partitions=1)
    good = [order(n, key="k") for n in range(10)]
    invalid = Event(type=ORDER, source="tests", key="k", data={"order_id": 1})
    unknown = Event(type="eventq.ping.v1", source="tests", key="k", data={})
    await publish(kafka_settings, topic, good[:4])
    raw = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await raw.start()
    garbage_headers = [("x-trace", b"abc")]
    await raw.send_and_wait(topic, b"not an event", key=b"k", headers=garbage_headers)
    bad = encode(invalid)
    await raw.send_and_wait(topic, bad.value, key=bad.key, headers=bad.headers)
    await raw.stop()
    await publish(kafka_settings, topic, [*good[4:7], unknown, *good[7:]])

    app = App("t", topics=[topic])
    handled: list[str] = []

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        handled.append(event.id)

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert handled == [e.id for e in good]
    letters = await read_topic(f"{topic}.dlt", 3)
    assert len(letters) == 3
    first = letters[0]
    assert (first.key, first.value) == (b"k", b"not an event")
    headers = dict(first.headers)
    assert headers["x-trace"] == b"abc"
    assert headers["eventq-dlt-reason"] == b"invalid"
    assert headers["eventq-dlt-topic"] == topic.encode()
    assert headers["eventq-dlt-offset"] == b"4"
    assert b"missing or empty ce_specversion" in headers["eventq-dlt-error-message"]
    second = dict(letters[1].headers)
    assert (letters[1].value, second["eventq-dlt-reason"]) == (bad.value, b"invalid")
    assert b"violates its schema" in second["eventq-dlt-error-message"]
    assert dict(letters[1].headers)["ce_id"] == invalid.id.encode()
    third = dict(letters[2].headers)
    assert (third["eventq-dlt-reason"], third["ce_id"]) == (b"unknown-type", unknown.id.encode())
    outcomes = {r["event_id"]: r["outcome"] for r in await rows(database, settings.group_id or "")}
    assert outcomes == {**{e.id: "handled" for e in good}, invalid.id: "dead_lettered", unknown.id: "dead_lettered"}
    assert await committed(kafka_settings, settings.group_id or "", topic) == {0: 13}


async def test_unknown_types_can_be_skipped_and_recorded_instead(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """With on_unknown_type=skip an event nobody handles gets a 'skipped' row and no dead letter."""
    topic = await new_topic(partitions=1)
    ping = Event(type="eventq.ping.v1", source="tests", data={})
    await publish(kafka_settings, topic, [ping, order(1)])
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    settings = consumer_settings(kafka_settings, database, topic, on_unknown_type="skip")
    await run_until_idle(app, settings)

    outcomes = {r["event_id"]: r["outcome"] for r in await rows(database, settings.group_id or "")}
    assert outcomes[ping.id] == "skipped"
    assert await read_topic(f"{topic}.dlt", 0, timeout_ms=500) == []


async def test_failures_are_retried_with_backoff_up_to_max_attempts_then_dead_lettered(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """An always-failing handler runs max_attempts times with doubling delays, then its event is dead-lettered."""
    topic = await new_topic(partitions=1)
    event = order(1)
    await publish(kafka_settings, topic, [event])
    app = App("t", topics=[topic])
    attempts: list[float] = []

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError(f"payment service down (attempt {ctx.attempt})")

    settings = consumer_settings(
        kafka_settings, database, topic, max_attempts=3, backoff_initial_s=0.3, backoff_max_s=5.0
    )
    await run_until_idle(app, settings)

    assert len(attempts) == 3
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[0] >= 0.3 * 0.9 and gaps[1] >= 0.6 * 0.9, gaps
    [letter] = await read_topic(f"{topic}.dlt", 1)
    headers = dict(letter.headers)
    assert headers["eventq-dlt-reason"] == b"exhausted"
    assert headers["eventq-dlt-attempts"] == b"3"
    assert headers["eventq-dlt-error-type"] == b"builtins.RuntimeError"
    assert headers["eventq-dlt-error-message"] == b"payment service down (attempt 3)"
    assert b"in handle" in headers["eventq-dlt-stacktrace"]
    assert headers["eventq-dlt-handler"].endswith(b"handle")
    assert headers["eventq-dlt-first-failure"] < headers["eventq-dlt-last-failure"]
    assert headers["ce_id"] == event.id.encode()
    assert [r["outcome"] for r in await rows(database, settings.group_id or "")] == ["dead_lettered"]


async def test_retry_later_waits_its_delay_reject_dead_letters_at_once_and_a_transient_failure_recovers(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """RetryLater(delay) delays the next attempt, Reject stops after one attempt, a flaky handler succeeds."""
    topic = await new_topic(partitions=3)
    later, rejected, flaky = order(1, key="a"), order(2, key="b"), order(3, key="c")
    await publish(kafka_settings, topic, [later, rejected, flaky])
    app = App("t", topics=[topic])
    calls: defaultdict[str, list[float]] = defaultdict(list)

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        calls[event.id].append(time.monotonic())
        if event.id == later.id and ctx.attempt == 1:
            raise RetryLater(1.0, "inventory not synced yet")
        if event.id == rejected.id:
            raise Reject("order amount is negative")
        if event.id == flaky.id and ctx.attempt < 3:
            raise ConnectionError("flaky")

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert len(calls[later.id]) == 2 and calls[later.id][1] - calls[later.id][0] >= 0.95
    assert len(calls[rejected.id]) == 1
    assert len(calls[flaky.id]) == 3
    [letter] = await read_topic(f"{topic}.dlt", 1)
    assert dict(letter.headers)["eventq-dlt-reason"] == b"rejected"
    assert dict(letter.headers)["eventq-dlt-attempts"] == b"1"
    outcomes = {r["event_id"]: r["outcome"] for r in await rows(database, settings.group_id or "")}
    assert outcomes == {later.id: "handled", rejected.id: "dead_lettered", flaky.id: "handled"}


async def test_a_retrying_partition_does_not_stall_the_others(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """While one partition waits 3 s to retry, events of the other partitions are handled meanwhile."""
    topic = await new_topic(partitions=2)
    slow = order(0, key="slow")
    await publish(kafka_settings, topic, [slow])
    others = [order(n, key=f"k{n}") for n in range(1, 80)]
    others = [e for e in others if (await _partition_of(kafka_settings, topic, e)) != await _partition_of(
        kafka_settings, topic, slow)]
    app = App("t", topics=[topic])
    handled_at: dict[str, float] = {}

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        if event.id == slow.id and ctx.attempt == 1:
            asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(publish(
                kafka_settings, topic, others)))
            raise RetryLater(3.0)
        handled_at[event.id] = time.monotonic()

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert others and all(handled_at[e.id] < handled_at[slow.id] for e in others)


async def _partition_of(kafka: KafkaSettings, topic: str, event: Event) -> int:
    from aiokafka.partitioner import murmur2

    count = len(await partitions_of(kafka, topic))
    hashed: int = murmur2((event.key or "").encode())  # aiokafka ships no type information
    return (hashed & 0x7FFFFFFF) % count


async def test_a_batch_handler_reports_per_event_outcomes(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """A batch handler gets consecutive events in order; only events it reports failed are retried or dead-lettered."""
    topic = await new_topic(partitions=1)
    events = [order(n, key="k") for n in range(20)]
    await publish(kafka_settings, topic, events)
    app = App("t", topics=[topic])
    batches: list[list[str]] = []

    @app.batch_handler(ORDER)
    async def handle(batch: list[Event], ctx: BatchContext) -> dict[str, BaseException]:
        batches.append([e.id for e in batch])
        failures: dict[str, BaseException] = {}
        for e in batch:
            if e.id == events[3].id:
                failures[e.id] = Reject("bad")
            elif e.id == events[5].id and ctx.attempt == 1:
                failures[e.id] = RuntimeError("try again")
        return failures

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert [i for b in batches for i in b if i != events[5].id] == [e.id for e in events if e.id != events[5].id]
    assert [events[5].id] in batches  # the retry carried only the failed event
    [letter] = await read_topic(f"{topic}.dlt", 1)
    assert dict(letter.headers)["ce_id"] == events[3].id.encode()
    outcomes = Counter(r["outcome"] for r in await rows(database, settings.group_id or ""))
    assert outcomes == Counter({"handled": 19, "dead_lettered": 1})


async def test_key_ordering_runs_keys_concurrently_and_keeps_each_keys_order(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """With ordering=key, events of one key are handled in publish order while different keys overlap."""
    topic = await new_topic(partitions=2)
    events = [order(n, key=f"key-{n % 8}") for n in range(160)]
    await publish(kafka_settings, topic, events)
    app = App("t", topics=[topic])
    started: defaultdict[str | None, list[str]] = defaultdict(list)
    running = 0
    peak = 0

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        nonlocal running, peak
        started[event.key].append(event.id)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002 * (hash(event.id) % 5))
        running -= 1

    settings = consumer_settings(kafka_settings, database, topic, ordering="key")
    await run_until_idle(app, settings)

    for key, ids in started.items():
        assert ids == [e.id for e in events if e.key == key], key
    assert peak > 2  # keys really ran concurrently


async def test_follow_up_events_carry_correlation_and_causation(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """An event published with ctx.publish inside a handler has the handled event's correlation id and id as cause."""
    from eventq.schemas.envelope import decode

    topic, out = await new_topic(partitions=1), await new_topic(partitions=1)
    created = order(1)
    await publish(kafka_settings, topic, [created])
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        paid = {"order_id": "o-1", "amount_cents": 1}
        await ctx.publish(Event(type="demo.order.paid.v1", source="tests", data=paid), topic=out)

    await run_until_idle(app, consumer_settings(kafka_settings, database, topic))

    [rec] = await read_topic(out, 1)
    follow_up = decode(rec.key, rec.value, rec.headers)
    assert (follow_up.correlation_id, follow_up.causation_id) == (created.correlation_id, created.id)


async def test_transactional_handler_writes_commit_with_the_row_and_roll_back_with_a_failure(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A transactional handler's writes commit with the processed_events row; a failed attempt leaves neither."""
    topic = await new_topic(partitions=1)
    events = [order(n, key="k") for n in range(5)]
    await publish(kafka_settings, topic, events)
    conn = await asyncpg.connect(database)
    await conn.execute("CREATE TABLE balances (event_id uuid PRIMARY KEY, attempt int)")
    app = App("t", topics=[topic])

    @app.handler(ORDER, transactional=True)
    async def handle(event: Event, ctx: Context) -> None:
        await ctx.db.execute("INSERT INTO balances VALUES ($1, $2)", event.id, ctx.attempt)
        if event.id == events[2].id and ctx.attempt == 1:
            raise RuntimeError("fails after writing")

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    written = {str(r["event_id"]): r["attempt"] for r in await conn.fetch("SELECT * FROM balances")}
    await conn.close()
    assert written == {e.id: (2 if e is events[2] else 1) for e in events}
    assert len(await rows(database, settings.group_id or "")) == 5


async def test_stop_finishes_in_flight_work_commits_and_leaves(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """stop() while handlers are running lets them finish, records and commits them, then run() returns."""
    topic = await new_topic(partitions=2)
    events = [order(n) for n in range(40)]
    await publish(kafka_settings, topic, events)
    app = App("t", topics=[topic])
    entered = asyncio.Event()
    handled: list[str] = []

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        entered.set()
        await asyncio.sleep(0.05)
        handled.append(event.id)

    settings = consumer_settings(kafka_settings, database, topic)
    daemon = Consumer(app, settings)
    running = asyncio.create_task(daemon.run())
    await asyncio.wait_for(entered.wait(), 30)
    daemon.stop()
    await asyncio.wait_for(running, 30)

    recorded = await rows(database, settings.group_id or "")
    assert handled and sorted(r["event_id"] for r in recorded) == sorted(handled)
    offsets = await committed(kafka_settings, settings.group_id or "", topic)
    assert sum(offsets.values()) == len(handled)  # committed exactly what was handled, nothing beyond


async def test_a_duplicate_fetched_while_its_first_copy_is_being_recorded_still_skips_its_handler(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Pipelined slices of one record each: a copy right behind its original runs no handler, recorded or not."""
    topic = await new_topic(partitions=1)
    events = [order(n, key="k") for n in range(150)]
    await publish(kafka_settings, topic, [e for event in events for e in (event, event)])  # each twice, adjacent
    app = App("t", topics=[topic])
    runs: Counter[str] = Counter()

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        runs[event.id] += 1

    # One record per slice: each copy is fetched while its original's row is being written.
    settings = consumer_settings(kafka_settings, database, topic, max_batch_size=1)
    await run_until_idle(app, settings)

    assert runs == Counter({event.id: 1 for event in events})
    assert len(await rows(database, settings.group_id or "")) == 150
    assert await committed(kafka_settings, settings.group_id or "", topic) == {0: 300}


async def test_two_consumers_split_partitions_and_a_rebalance_loses_nothing(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A member joining mid-stream takes partitions over after the old owner committed; one row per event."""
    topic = await new_topic()
    settings = consumer_settings(kafka_settings, database, topic)
    handled_by: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}

    def make_app(name: str) -> App:
        app = App("t", topics=[topic])

        @app.handler(ORDER)
        async def handle(event: Event, ctx: Context) -> None:
            await asyncio.sleep(0.001)
            handled_by[name][event.id] += 1

        return app

    class CountDuplicates(Instruments):
        skipped = 0

        async def after_handlers(self, sl: Slice) -> None:
            CountDuplicates.skipped += sl.duplicates

    first = Consumer(make_app("a"), settings, instruments=CountDuplicates())
    second = Consumer(make_app("b"), settings, instruments=CountDuplicates())
    events = [order(n, key=f"c{n}") for n in range(3000)]
    run_a = asyncio.create_task(first.run())
    await publish(kafka_settings, topic, events[:1000])
    await asyncio.sleep(1.0)
    run_b = asyncio.create_task(second.run())
    for start in range(1000, 3000, 500):
        await publish(kafka_settings, topic, events[start:start + 500])
        await asyncio.sleep(0.3)
    async with asyncio.timeout(60):
        while len(await rows(database, settings.group_id or "")) < len(events):
            await asyncio.sleep(0.5)
    first.stop()
    second.stop()
    await asyncio.gather(run_a, run_b)

    recorded = await rows(database, settings.group_id or "")
    assert sorted(r["event_id"] for r in recorded) == sorted(e.id for e in events)
    assert handled_by["a"] and handled_by["b"]  # both members did work
    assert set(handled_by["a"]) | set(handled_by["b"]) == {e.id for e in events}
    # Revoked partitions were committed before the rebalance completed: the new owner
    # was never handed an event the old one had finished (not even to skip it).
    assert CountDuplicates.skipped == 0
    assert not set(handled_by["a"]) & set(handled_by["b"])
    ends = await end_offsets(kafka_settings, topic, nonempty=True)
    assert await committed(kafka_settings, settings.group_id or "", topic) == ends


async def test_a_revocation_longer_than_the_session_timeout_still_hands_over_cleanly(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A handler still running 9 s when a member joins (session timeout 6 s): the old owner finishes and commits
    inside the rebalance (its timeout is max_poll_interval_s), so nobody runs the event again."""
    topic = await new_topic(partitions=1)
    settings = consumer_settings(kafka_settings, database, topic, shutdown_grace_s=15.0, max_poll_interval_s=30.0)
    runs: Counter[str] = Counter()
    started = asyncio.Event()

    def make_app() -> App:
        app = App("t", topics=[topic])

        @app.handler(ORDER)
        async def slow(event: Event, ctx: Context) -> None:
            runs[event.id] += 1
            started.set()
            await asyncio.sleep(9)

        return app

    first, second = Consumer(make_app(), settings), Consumer(make_app(), settings)
    run_a = asyncio.create_task(first.run())
    event = order(0)
    await publish(kafka_settings, topic, [event])
    await asyncio.wait_for(started.wait(), 30)
    run_b = asyncio.create_task(second.run())
    async with asyncio.timeout(60):
        while await committed(kafka_settings, settings.group_id or "", topic) != {0: 1}:
            await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # room for a second run to show
    first.stop()
    second.stop()
    await asyncio.gather(run_a, run_b)

    assert runs == {event.id: 1}


async def test_startup_problems_are_named(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A missing topic, a database without eventq's tables and a missing dead-letter topic each fail with the fix."""
    from eventq.errors import ConsumerError

    topic = await new_topic(partitions=1)
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(ConsumerError, match="eventq topics create no.such.topic"):
        await Consumer(app, consumer_settings(kafka_settings, database, "no.such.topic")).run(until_idle=True)
    conn = await asyncpg.connect(database)
    await conn.execute("ALTER TABLE processed_events RENAME TO elsewhere")
    with pytest.raises(ConsumerError, match="eventq db migrate"):
        await Consumer(app, consumer_settings(kafka_settings, database, topic)).run(until_idle=True)
    await conn.execute("ALTER TABLE elsewhere RENAME TO processed_events")
    await conn.close()
    no_dlt = consumer_settings(kafka_settings, database, topic, create_topics=False)
    with pytest.raises(ConsumerError, match=f"eventq topics create {topic}.dlt"):
        await Consumer(app, no_dlt).run(until_idle=True)



async def test_a_transactional_handlers_own_timeout_counts_as_an_attempt(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, read_topic: Reader
) -> None:
    """A transactional handler's own TimeoutError is its failure, not a database outage: retried, then dead-lettered."""
    topic = await new_topic(partitions=1)
    await publish(kafka_settings, topic, [order(1)])
    app = App("t", topics=[topic])
    calls = 0

    @app.handler(ORDER, transactional=True, max_attempts=2)
    async def handle(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError("the payment API did not answer")

    await run_until_idle(app, consumer_settings(kafka_settings, database, topic))

    [letter] = await read_topic(f"{topic}.dlt", 1)
    assert calls == 2 and dict(letter.headers)["eventq-dlt-attempts"] == b"2"


async def test_a_failing_before_commit_hook_skips_that_commit_only(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A hook that raises before a commit skips that commit; later commits happen and the daemon stops cleanly."""
    topic = await new_topic(partitions=1)
    await publish(kafka_settings, topic, [order(n, key="k") for n in range(30)])
    app = App("t", topics=[topic])

    @app.handler(ORDER)
    async def handle(event: Event, ctx: Context) -> None:
        pass

    class FailOnce(Instruments):
        failed = False

        async def before_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
            if not FailOnce.failed:
                FailOnce.failed = True
                raise RuntimeError("hook failed")

    settings = consumer_settings(kafka_settings, database, topic)
    await run_until_idle(app, settings, instruments=FailOnce())

    assert FailOnce.failed
    assert await committed(kafka_settings, settings.group_id or "", topic) == {0: 30}
