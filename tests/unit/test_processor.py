"""Decoding, deduping and handling one partition's slice (stages 2–4), without Kafka or PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs
from structlog.typing import EventDict

from eventq.consumers import App, BatchContext, ConsumerSettings, Context
from eventq.consumers.deadletter import DeadLetter
from eventq.consumers.decode import decode_items
from eventq.consumers.dedupe import mark_duplicates
from eventq.consumers.handle import Handle
from eventq.consumers.health import Status
from eventq.consumers.outcome import Interrupt, Item, Slice
from eventq.consumers.store import Processed
from eventq.errors import InvalidEvent, Reject, RetryLater, SchemaViolation
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES, Event, encode
from eventq.schemas.registry import SchemaRegistry
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.unit.fakes import Record

CREATED = "demo.order.created.v1"
PAID = "demo.order.paid.v1"
UNDECLARED = "order.refunded.v1"  # no schema: decoded without validation
REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS)




def order(key: str = "customer-7", event_type: str = CREATED, **data: Any) -> Event:
    payload: dict[str, Any] = {"order_id": "o-1", "customer_id": key, "amount_cents": 1250, "currency": "EUR"}
    payload.update(data)
    return Event(type=event_type, source="orders-service", key=key, data=payload)


def paid() -> Event:
    return Event(type=PAID, source="payments", key="customer-7", data={"order_id": "o-1", "amount_cents": 1250})


def record_of(event: Event, offset: int = 0) -> Record:
    encoded = encode(event)
    return Record("orders", 3, offset, encoded.timestamp_ms, encoded.key, encoded.value, encoded.headers)


def items_of(app: App, *events: Event) -> list[Item]:
    records = [record_of(event, offset) for offset, event in enumerate(events, start=100)]
    return decode_items(records, app, REGISTRY, DEFAULT_MAX_EVENT_BYTES)


class ProbedPool:
    """Stands in for the daemon's pool where only the outage probe (SELECT 1) is used."""

    def __init__(self, answers: bool = True, busy: bool = False) -> None:
        self.answers = answers
        self.busy = busy

    async def acquire(self, timeout: float) -> ProbedPool:
        if self.busy:
            raise TimeoutError  # no free connection within the timeout
        if not self.answers:
            raise ConnectionRefusedError("database down")
        return self

    async def fetchval(self, query: str, timeout: float) -> int:
        return 1

    async def release(self, conn: ProbedPool) -> None:
        pass


class SliceResult:
    """What the daemon derives from a slice's outcomes: rows, dead letters, counts, the offset to commit."""

    def __init__(self, sl: Slice) -> None:
        self.rows = sl.rows
        self.letters: list[DeadLetter] = [item.letter("billing") for item in sl.lettered]
        self.handled = sl.handled
        self.duplicates = sl.duplicates
        self.next_offset = sl.next_offset


class Processor:
    """Stages 3 and 4 over one slice, as the daemon runs them."""

    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    async def run(
        self, items: list[Item], seen: set[tuple[str, str]] | dict[tuple[str, str], str],
        interrupt: Interrupt | None = None,
    ) -> SliceResult:
        mark_duplicates(items, seen if isinstance(seen, dict) else dict.fromkeys(seen, "handled"))
        await self.handle.run(items, interrupt)
        return SliceResult(Slice("orders", 3, items))


def processor(app: App, pool: ProbedPool | None = None, **settings: Any) -> Processor:
    fields: dict[str, Any] = {"backoff_initial_s": 0, "backoff_jitter": 0}
    fields.update(settings)
    return Processor(Handle(
        app=app, settings=ConsumerSettings(**fields), group="billing", producer=None,  # type: ignore[arg-type]
        pool=pool or ProbedPool(), status=Status(),
    ))


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[EventDict]]:
    """Log entries as dicts (and nothing printed)."""
    with capture_logs() as entries:
        yield entries


# -- decode_items --------------------------------------------------------------------


def test_valid_record_is_routed_to_its_handler() -> None:
    """A valid record decodes to its event and gets the handler registered for its type."""
    app = App("billing")

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        pass

    event = order()
    [item] = items_of(app, event)

    assert item.event == event
    assert item.invalid is None
    assert item.handler is app.route(CREATED)
    assert item.record.offset == 100


def test_garbage_record_is_invalid_without_an_event() -> None:
    """A record that is not an envelope gets `invalid` set and no event or handler."""
    app = App("billing")
    record = Record("orders", 0, 5, 0, None, b"nope", [])

    [item] = decode_items([record], app, REGISTRY, DEFAULT_MAX_EVENT_BYTES)

    assert item.event is None and item.handler is None
    assert isinstance(item.invalid, InvalidEvent)
    assert "missing or empty ce_specversion" in str(item.invalid)


def test_schema_violation_keeps_the_event_and_marks_it_invalid() -> None:
    """A well-formed envelope whose payload breaks its schema keeps its event but gets `invalid` set."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    bad = order(amount_cents="12.50", currency="eur")

    [item] = items_of(app, bad)

    assert item.event is not None and item.event.id == bad.id
    assert isinstance(item.invalid, SchemaViolation)
    assert item.invalid.event_type == CREATED


def test_type_without_handler_has_no_handler() -> None:
    """An event of a type the App does not handle decodes fine but gets handler None."""
    app = App("billing")
    app.handler(CREATED)(_noop)

    [declared] = items_of(app, paid())
    [undeclared] = items_of(app, order(event_type=UNDECLARED))

    assert declared.event is not None and declared.event.type == PAID and declared.invalid is None
    assert undeclared.event is not None and undeclared.event.type == UNDECLARED and undeclared.invalid is None
    assert declared.handler is None and undeclared.handler is None


async def _noop(event: Event, ctx: Context) -> None:
    pass


# -- Processor.run -------------------------------------------------------------------


def rows(result: SliceResult) -> list[tuple[str, int, str]]:
    return [(row.event_id, row.offset, row.outcome) for row in result.rows]


async def test_handler_failing_while_the_database_is_down_uses_up_no_attempt() -> None:
    """A connection error while eventq's database does not answer either is an outage: the attempt reruns, uncounted."""
    app = App("billing")
    pool = ProbedPool(answers=False)
    attempts: list[int] = []

    @app.handler(CREATED, max_attempts=2)
    async def writes(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 3:
            pool.answers = True
        if len(attempts) <= 3:
            raise ConnectionRefusedError("database down")

    event = order()
    result = await processor(app, pool).run(items_of(app, event), set())

    assert attempts == [1, 1, 1, 2]  # two outages, then attempt 1 failed for real and attempt 2 succeeded
    assert result.rows == [Processed(event.id, "orders", 3, 100, "handled", event.source)]


async def test_batch_handler_failing_while_the_database_is_down_reruns_only_the_failed_events_uncounted() -> None:
    """A batch handler's outage failures rerun the same attempt for those events only; the rest are handled once."""
    app = App("billing")
    pool = ProbedPool(answers=False)
    calls: list[tuple[int, int]] = []  # (attempt, events in the call)

    @app.batch_handler(CREATED, max_attempts=2)
    async def writes(events: list[Event], ctx: BatchContext) -> dict[str, Exception]:
        calls.append((ctx.attempt, len(events)))
        if len(calls) == 2:
            pool.answers = True
        if len(calls) <= 2:
            return {events[-1].id: ConnectionRefusedError("database down")}
        return {}

    first, second = order(), order()
    result = await processor(app, pool).run(items_of(app, first, second), set())

    # an outage at attempt 1 (rerun, uncounted), then attempt 1 failed for real, and attempt 2 succeeded
    assert calls == [(1, 2), (1, 1), (2, 1)]
    assert rows(result) == [(first.id, 100, "handled"), (second.id, 101, "handled")]


async def test_handler_connection_error_with_a_busy_pool_counts_as_an_attempt() -> None:
    """A pool with no free connection counts as answering: the handler's own connection errors use up attempts."""
    app = App("billing")
    attempts: list[int] = []

    @app.handler(CREATED, max_attempts=2)
    async def calls_out(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ConnectionRefusedError("payments service down")

    event = order()
    result = await processor(app, ProbedPool(busy=True)).run(items_of(app, event), set())

    assert attempts == [1, 2]
    assert rows(result) == [(event.id, 100, "dead_lettered")]


async def test_handler_that_fails_twice_then_succeeds_is_recorded_once() -> None:
    """A transient failure is retried; after the third attempt succeeds there is one handled row and no letter."""
    app = App("billing")
    attempts: list[int] = []

    @app.handler(CREATED)
    async def flaky(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise ConnectionResetError("downstream hiccup")

    event = order()
    result = await processor(app).run(items_of(app, event), set())

    assert attempts == [1, 2, 3]
    assert result.rows == [Processed(event.id, "orders", 3, 100, "handled", event.source)]
    assert (result.letters, result.handled, result.duplicates) == ([], 1, 0)


async def test_retries_are_logged_with_attempt_and_limit(logs: list[EventDict]) -> None:
    """Each scheduled retry logs event.retry_scheduled with the attempt, limit and error."""
    app = App("billing")
    calls = 0

    @app.handler(CREATED)
    async def flaky(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("downstream hiccup")

    event = order()
    await processor(app, max_attempts=4).run(items_of(app, event), set())

    [retry] = [entry for entry in logs if entry["event"] == "event.retry_scheduled"]
    assert (retry["event_id"], retry["attempt"], retry["max_attempts"], retry["delay_s"]) == (event.id, 1, 4, 0)
    assert (retry["error_type"], retry["error"]) == ("ConnectionResetError", "downstream hiccup")


async def test_always_failing_handler_is_dead_lettered_after_max_attempts() -> None:
    """With max_attempts=2 a handler that always fails runs twice, then its event is dead-lettered as exhausted."""
    app = App("billing")
    calls = 0

    @app.handler(CREATED)
    async def broken(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("sku-9")

    event = order()
    result = await processor(app, max_attempts=2).run(items_of(app, event), set())

    assert calls == 2
    [letter] = result.letters
    assert (letter.failure.reason, letter.failure.attempts) == ("exhausted", 2)
    assert letter.failure.error_type == "builtins.KeyError"
    assert letter.failure.handler == app.route(CREATED).name  # type: ignore[union-attr]
    assert "in broken" in letter.failure.stacktrace
    assert (letter.topic, letter.partition, letter.offset, letter.group) == ("orders", 3, 100, "billing")
    assert letter.value == record_of(event).value and letter.key == b"customer-7"
    assert rows(result) == [(event.id, 100, "dead_lettered")]
    assert result.handled == 0


async def test_handler_max_attempts_overrides_the_daemon_limit() -> None:
    """A handler's own max_attempts wins over the daemon's."""
    app = App("billing")
    calls = 0

    @app.handler(CREATED, max_attempts=1)
    async def broken(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("no")

    result = await processor(app, max_attempts=5).run(items_of(app, order()), set())

    assert calls == 1
    assert result.letters[0].failure.attempts == 1


async def test_reject_dead_letters_at_once() -> None:
    """Reject dead-letters the event after one call, with reason rejected and the handler's message."""
    app = App("billing")
    calls = 0

    @app.handler(CREATED)
    async def refuse(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise Reject("currency not supported")

    event = order()
    result = await processor(app, max_attempts=5).run(items_of(app, event), set())

    assert calls == 1
    [letter] = result.letters
    assert (letter.failure.reason, letter.failure.attempts, letter.failure.message) == (
        "rejected", 1, "currency not supported",
    )
    assert letter.failure.error_type == "eventq.errors.Reject"
    assert rows(result) == [(event.id, 100, "dead_lettered")]


async def test_retry_later_is_retried_after_its_delay(logs: list[EventDict]) -> None:
    """RetryLater(0.01) makes the event run again (after 0.01 s, not the back-off) and it then succeeds."""
    app = App("billing")
    attempts: list[int] = []

    @app.handler(CREATED)
    async def later(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater(0.01, "stock not synced yet")

    event = order()
    result = await processor(app, backoff_initial_s=10, backoff_max_s=10).run(items_of(app, event), set())

    assert attempts == [1, 2]
    assert rows(result) == [(event.id, 100, "handled")]
    assert [entry["delay_s"] for entry in logs if entry["event"] == "event.retry_scheduled"] == [0.01]


async def test_retry_later_counts_as_an_attempt() -> None:
    """RetryLater on the last allowed attempt dead-letters the event as exhausted."""
    app = App("billing")

    @app.handler(CREATED)
    async def later(event: Event, ctx: Context) -> None:
        raise RetryLater(0)

    result = await processor(app, max_attempts=2).run(items_of(app, order()), set())

    assert [(letter.failure.reason, letter.failure.attempts) for letter in result.letters] == [("exhausted", 2)]


async def test_events_already_finished_are_not_handled() -> None:
    """An event whose id the group already finished is skipped and counted as a duplicate, with no row."""
    app = App("billing")
    handled: list[str] = []

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        handled.append(event.id)

    done, fresh = order("a"), order("b")
    result = await processor(app).run(items_of(app, done, fresh), {(done.id, done.source)})

    assert handled == [fresh.id]
    assert result.duplicates == 1 and result.handled == 1
    assert rows(result) == [(fresh.id, 101, "handled")]


async def test_same_event_twice_in_a_slice_runs_once() -> None:
    """The same event id twice in one slice (a producer retry) runs its handler once and records the first."""
    app = App("billing")
    handled: list[int] = []

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        handled.append(ctx.offset)

    event = order()
    result = await processor(app).run(items_of(app, event, event), set())

    assert handled == [100]
    assert result.duplicates == 1
    assert rows(result) == [(event.id, 100, "handled")]


async def test_invalid_record_is_dead_lettered_without_running_a_handler() -> None:
    """A garbage record is dead-lettered as invalid with 0 attempts and no row (it has no event id)."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    record = Record("orders", 3, 7, 1714564800123, b"k", b"nope", [("x-tag", b"a")])

    result = await processor(app).run(decode_items([record], app, REGISTRY, DEFAULT_MAX_EVENT_BYTES), set())

    [letter] = result.letters
    assert (letter.failure.reason, letter.failure.attempts, letter.failure.handler) == ("invalid", 0, "")
    assert letter.failure.error_type == "eventq.errors.InvalidEvent"
    assert (letter.value, letter.headers) == (b"nope", [("x-tag", b"a")])
    assert result.rows == []


async def test_schema_violation_is_dead_lettered_with_a_row() -> None:
    """A payload that breaks its schema is dead-lettered as invalid, and its event id recorded as dead_lettered."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    bad = order(currency="eur")

    result = await processor(app).run(items_of(app, bad), set())

    [letter] = result.letters
    assert letter.failure.reason == "invalid"
    assert letter.failure.error_type == "eventq.errors.SchemaViolation"
    assert rows(result) == [(bad.id, 100, "dead_lettered")]


async def test_already_dead_lettered_invalid_event_is_not_dead_lettered_again() -> None:
    """A schema-invalid event whose id the group already finished is a duplicate, not a second dead letter."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    bad = order(currency="eur")

    result = await processor(app).run(items_of(app, bad), {(bad.id, bad.source)})

    assert (result.letters, result.rows, result.duplicates) == ([], [], 1)


async def test_unknown_type_is_dead_lettered_by_default() -> None:
    """An event no handler takes is dead-lettered as unknown-type, naming the types the App handles."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    event = paid()

    result = await processor(app).run(items_of(app, event), set())

    [letter] = result.letters
    assert (letter.failure.reason, letter.failure.attempts, letter.failure.handler) == ("unknown-type", 0, "")
    assert letter.failure.error_type == "eventq.errors.UnknownEventType"
    assert letter.failure.message == f"no handler for event type {PAID!r} in app 'billing' (handled: {CREATED})"
    assert rows(result) == [(event.id, 100, "dead_lettered")]


async def test_unknown_type_is_skipped_when_configured() -> None:
    """With on_unknown_type="skip" an unhandled event is recorded as skipped and not dead-lettered."""
    app = App("billing")
    app.handler(CREATED)(_noop)
    event = order(event_type=UNDECLARED)

    result = await processor(app, on_unknown_type="skip").run(items_of(app, event), set())

    assert result.letters == []
    assert rows(result) == [(event.id, 100, "skipped")]
    assert result.handled == 0


async def test_batch_handler_retries_only_the_events_it_reports_failed() -> None:
    """A batch handler returning {event_id: error} for one event gets only that event back on the next call."""
    app = App("billing")
    calls: list[list[str]] = []
    first, second, third = order("a"), order("b"), order("c")

    @app.batch_handler(CREATED)
    async def on_batch(events: list[Event], ctx: BatchContext) -> dict[str, BaseException] | None:
        calls.append([event.id for event in events])
        if ctx.attempt == 1:
            return {second.id: RuntimeError("row locked")}
        return None

    result = await processor(app).run(items_of(app, first, second, third), set())

    assert calls == [[first.id, second.id, third.id], [second.id]]
    assert sorted(rows(result), key=lambda row: row[1]) == [
        (first.id, 100, "handled"), (second.id, 101, "handled"), (third.id, 102, "handled"),
    ]
    assert result.letters == [] and result.handled == 3


async def test_batch_handler_that_raises_fails_every_event() -> None:
    """A batch handler that raises fails all its events; on exhaustion each is dead-lettered."""
    app = App("billing")
    calls = 0

    @app.batch_handler(CREATED, max_attempts=2)
    async def on_batch(events: list[Event], ctx: BatchContext) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("db down")

    first, second = order("a"), order("b")
    result = await processor(app).run(items_of(app, first, second), set())

    assert calls == 2
    assert [(letter.offset, letter.failure.reason, letter.failure.attempts) for letter in result.letters] == [
        (100, "exhausted", 2), (101, "exhausted", 2),
    ]


async def test_key_ordering_keeps_each_key_in_order_and_runs_keys_concurrently() -> None:
    """With ordering="key" events of one key run one after another in offset order while other keys run alongside."""
    app = App("billing")
    started: list[tuple[str, int]] = []
    finished: list[tuple[str, int]] = []
    running = 0
    most = 0

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        nonlocal running, most
        started.append((event.key or "", ctx.offset))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05 if event.key == "slow" else 0.005)
        running -= 1
        finished.append((event.key or "", ctx.offset))

    events = [order("slow"), order("fast"), order("slow"), order("fast"), order("fast")]
    result = await processor(app, ordering="key").run(items_of(app, *events), set())

    assert [offset for key, offset in started if key == "slow"] == [100, 102]
    assert [offset for key, offset in started if key == "fast"] == [101, 103, 104]
    # Each key's next event starts only after its previous one finished.
    for key in ("slow", "fast"):
        mine = [offset for k, offset in finished if k == key]
        assert mine == sorted(mine)
    assert most == 2
    assert finished.index(("fast", 104)) < finished.index(("slow", 100))  # fast key was not held up by slow
    assert result.handled == 5


async def test_partition_ordering_runs_one_event_at_a_time_in_offset_order() -> None:
    """With ordering="partition" events run strictly one after another in offset order."""
    app = App("billing")
    started: list[int] = []
    running = 0
    most = 0

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        nonlocal running, most
        started.append(ctx.offset)
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        running -= 1

    await processor(app).run(items_of(app, order("slow"), order("fast"), order("slow")), set())

    assert started == [100, 101, 102]
    assert most == 1


async def test_key_ordering_respects_max_concurrency() -> None:
    """With ordering="key" and max_concurrency=2, no more than two keys run at once."""
    app = App("billing")
    running = 0
    most = 0

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.002)
        running -= 1

    keys = ["a", "b", "c", "d", "e"]
    result = await processor(app, ordering="key", max_concurrency=2).run(
        items_of(app, *(order(key) for key in keys)), set()
    )

    assert most == 2
    assert result.handled == 5


# -- interruption (shutdown, revocation) ---------------------------------------------


async def test_an_interrupt_stops_the_slice_between_events_and_points_at_the_first_unfinished() -> None:
    """After an interrupt no further handler starts; next_offset is the first record not finished."""

    app = App("billing")
    interrupt = Interrupt()
    handled: list[int] = []

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        handled.append(ctx.offset)
        if ctx.offset == 101:
            interrupt.set()

    items = items_of(app, *(order() for _ in range(5)))
    result = await processor(app).run(items, set(), interrupt)

    assert handled == [100, 101]
    assert result.next_offset == 102
    assert [row.offset for row in result.rows] == [100, 101]


async def test_an_interrupt_cuts_a_retry_backoff_short_and_leaves_the_event_unfinished() -> None:
    """A 60 s back-off ends as soon as the interrupt comes; the event gets no row and is not committed."""

    app = App("billing")
    interrupt = Interrupt()

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        if ctx.offset == 101:
            raise RetryLater(60)

    items = items_of(app, order(), order(), order())
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, interrupt.set)
    started = loop.time()
    result = await processor(app).run(items, set(), interrupt)

    assert loop.time() - started < 5
    assert result.next_offset == 101
    assert [row.offset for row in result.rows] == [100]
    assert result.letters == []


async def test_a_finished_slice_points_past_its_last_record() -> None:
    """Without an interrupt next_offset is the last offset + 1, whatever the outcomes were."""
    app = App("billing")

    @app.handler(CREATED)
    async def on_created(event: Event, ctx: Context) -> None:
        raise Reject("no")

    result = await processor(app).run(items_of(app, order(), order()), set())

    assert result.next_offset == 102 and len(result.letters) == 2
