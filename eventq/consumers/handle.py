"""Stage 4 of 7 — handle: run the handlers of one partition's slice until each record has an outcome.

Records the decode stage found invalid, and events no handler takes, get their
outcome here without a handler. Every other event goes through **one attempt loop**
(:meth:`Handle._attempts`); what differs between handler kinds is a small strategy:

============== ==================================================================
plain          ``await handler(event, ctx)``
transactional  claim the row and run the handler in one transaction (``ctx.db``);
               an event claimed before is a duplicate
batch          ``await handler(events, ctx)`` for the pending events; it returns the
               failures by event id (an exception fails all of them)
retry topic    a failure is handed off to ``<topic>.retry.<n>`` instead of waited
               for here; a record from a retry topic waits until it is due first
============== ==================================================================

Guarantees:

- a handler runs only for events the dedupe stage left (once per event id per slice);
- with ``ordering="partition"`` events run one after another in offset order; with
  ``ordering="key"`` events of different keys run concurrently (at most
  ``max_concurrency`` at a time) while each key's events keep their order;
- a failing event is retried up to its attempt limit with exponential back-off and
  jitter (or the delay of :class:`~eventq.errors.RetryLater`) while other partitions
  go on; :class:`~eventq.errors.Reject` dead-letters at once; a database outage is
  waited out without using up attempts;
- every record ends with exactly one outcome (:mod:`eventq.consumers.outcome`), or
  none if interrupted (it is then delivered again). Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from eventq.consumers import retrytopics, store
from eventq.consumers.app import App, Handler
from eventq.consumers.context import BatchContext, Context
from eventq.consumers.deadletter import (
    REASON_EXHAUSTED,
    REASON_INVALID,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    REASON_UNKNOWN_TYPE,
    Failure,
)
from eventq.consumers.health import Status
from eventq.consumers.instruments import Instruments
from eventq.consumers.outcome import (
    DEAD_LETTERED,
    DUPLICATE,
    HANDED_OFF,
    HANDLED,
    SKIPPED,
    Interrupt,
    Item,
)
from eventq.consumers.settings import ConsumerSettings
from eventq.database import answers, is_outage
from eventq.errors import EventqError, Reject, RetryLater, UndecodableRecord, UnknownEventType
from eventq.outbox.writer import Outbox
from eventq.producers.producer import Producer
from eventq.schemas.correlation import enter_cause, exit_cause
from eventq.telemetry.logs import bounded, enter_work, exit_work

log = structlog.get_logger("eventq.consumer")

# One attempt over the pending items of a unit: None if all succeeded, else an error
# (or None) per item, in order. A strategy may give an item its outcome itself (a
# transactional duplicate); the loop gives the rest theirs.
Strategy = Callable[["Handle", list[Item], int], Awaitable[list[Exception | None] | None]]


class DatabaseStep(Exception):
    """One of eventq's own database steps around a transactional handler failed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def backoff_delay(attempt: int, settings: ConsumerSettings) -> float:
    """Delay before attempt ``attempt + 1``: initial·2^(attempt-1), capped at the maximum, then ± jitter."""
    delay: float = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** min(attempt - 1, 62))
    if settings.backoff_jitter:
        delay *= 1 + settings.backoff_jitter * random.uniform(-1.0, 1.0)
    return delay


class Handle:
    """The handle stage, shared by every partition of one daemon."""

    def __init__(
        self,
        *,
        app: App,
        settings: ConsumerSettings,
        group: str,
        producer: Producer,
        pool: Any,
        status: Status,
        instruments: Instruments | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.group = group
        self.producer = producer
        self.pool = pool
        self.status = status
        self.instruments = instruments or Instruments()
        self._outbox = outbox

    @property
    def outbox(self) -> Outbox:
        """Where a transactional handler's ``ctx.publish`` goes: outbox rows in its transaction."""
        if self._outbox is None:
            self._outbox = Outbox(self.producer.settings, registry=self.producer.registry)
        return self._outbox

    async def run(self, items: Sequence[Item], interrupt: Interrupt | None = None) -> None:
        """Give every item without an outcome one (unless ``interrupt`` stops the slice first)."""
        ins = self.instruments
        per_event = ins.per_event
        stop = interrupt or Interrupt()
        todo: list[Item] = []
        for item in items:
            if item.outcome is not None:  # a duplicate
                if per_event:
                    ins.event_finished(item)
            elif item.event is None or item.invalid is not None:
                invalid = item.invalid or EventqError()
                reason = REASON_UNDECODABLE if isinstance(invalid, UndecodableRecord) else REASON_INVALID
                self._dead_letter(item, Failure.from_exception(reason, invalid))
            elif item.handler is None:
                self._unknown(item)
            else:
                todo.append(item)
        if self.settings.ordering == "key" and len(todo) > 1:
            chains: dict[Any, list[Item]] = {}
            for item in todo:
                key = item.record.key
                chains.setdefault(key if key is not None else object(), []).append(item)
            limit = asyncio.Semaphore(self.settings.max_concurrency)

            async def one_key(chain: list[Item]) -> None:
                async with limit:
                    await self._in_order(chain, stop)

            await asyncio.gather(*(one_key(chain) for chain in chains.values()))
        elif todo:
            await self._in_order(todo, stop)

    async def _in_order(self, items: list[Item], stop: Interrupt) -> None:
        i = 0
        n = len(items)
        while i < n and not stop.requested:
            handler = items[i].handler
            assert handler is not None
            if handler.batch:
                j = i + 1
                while j < n and items[j].handler is handler:
                    j += 1
                await self._attempts(_batch, items[i:j], stop)
                i = j
            else:
                await self._attempts(_transactional if handler.transactional else _plain, [items[i]], stop)
                i += 1

    # -- the attempt loop -------------------------------------------------------------

    async def _attempts(self, strategy: Strategy, pending: list[Item], stop: Interrupt) -> None:
        """Attempt ``pending`` until each succeeds, is rejected, runs out of attempts or is handed off."""
        ins = self.instruments
        per_event = ins.per_event
        handler = pending[0].handler
        assert handler is not None
        if per_event:
            for item in pending:
                ins.event_started(item)
        attempt = 1
        first_failure: dict[int, datetime] = {}  # id(item) -> time of its first failure
        origin = pending[0].origin  # (a retry topic's record: always a unit of one)
        if origin is not None:
            if await stop.sleep(origin.seconds_until_due()):
                return self._interrupted(pending)
            attempt = origin.attempts + 1
            if origin.first_failure is not None:
                first_failure[id(pending[0])] = origin.first_failure
        try:
            while pending:
                errors = await strategy(self, pending, attempt)
                if errors is None:
                    for item in pending:
                        self._succeeded(item, attempt)
                    return
                if await self._outage(errors):
                    # The same attempt again for the failed ones, once the database answers.
                    failed = []
                    for item, error in zip(pending, errors, strict=True):
                        if error is not None:
                            failed.append(item)
                        else:
                            self._succeeded(item, attempt)
                    if stop.requested:
                        return self._interrupted(failed)
                    pending = failed
                    continue
                retry, delay = self._failed(handler, pending, errors, attempt, first_failure)
                if retry:
                    if await stop.sleep(delay):
                        return self._interrupted(retry)
                pending = retry
                attempt += 1
        except BaseException:  # cancelled: abandoned, delivered again later
            self._interrupted([item for item in pending if item.outcome is None])
            raise

    def _succeeded(self, item: Item, attempt: int) -> None:
        item.attempts = attempt
        if item.outcome is None:  # (a transactional duplicate has its outcome)
            item.outcome = HANDLED
        if self.instruments.per_event:
            self.instruments.event_finished(item)

    async def _outage(self, errors: list[Exception | None]) -> bool:
        """True if the failures are the database's, not the handler's (after waiting a back-off step).

        That is eventq's own step failing, or the handler's query failing while eventq's
        database does not answer either.
        """
        outage: Exception | None = None
        for error in errors:
            if error is None:
                continue
            cause = error.error if isinstance(error, DatabaseStep) else error
            if not is_outage(cause):
                return False
            if not isinstance(error, DatabaseStep) and outage is None and self.status.database_answers and (
                await answers(self.pool)
            ):
                return False
            outage = cause
        if outage is None:
            return False
        await self.status.database_down(outage)
        return True

    def _failed(
        self, handler: Handler, pending: list[Item], errors: list[Exception | None], attempt: int,
        first_failure: dict[int, datetime],
    ) -> tuple[list[Item], float]:
        """Outcomes of a failed attempt: handled, dead-lettered, handed off; the items to retry, after how long."""
        limit = handler.max_attempts or self.settings.max_attempts
        retry: list[Item] = []
        delay = 0.0
        now = datetime.now(UTC)
        for item, error in zip(pending, errors, strict=True):
            if error is None:
                self._succeeded(item, attempt)
                continue
            item.attempts = attempt
            with self._in_context(item, handler, attempt):
                wait = self._one_failed(item, handler, error, attempt, limit, first_failure, now)
            if wait is not None:
                retry.append(item)
                delay = max(delay, wait)
        if retry and handler.batch:
            head = pending[0].record
            log.warning(
                "batch.retry_scheduled", topic=head.topic, partition=head.partition, handler=handler.name,
                attempt=attempt, max_attempts=limit, failed=len(retry), delay_s=round(delay, 3),
            )
        return retry, delay

    @contextlib.contextmanager
    def _in_context(self, item: Item, handler: Handler, attempt: int) -> Iterator[None]:
        """Log lines about one event's failure carry the event (and its ``handle`` span), as its handler's do."""
        if handler.batch:
            yield
            return
        _, entered = _enter(self, item, attempt)
        try:
            yield
        finally:
            _leave(self, entered)

    def _one_failed(
        self, item: Item, handler: Handler, error: Exception, attempt: int, limit: int,
        first_failure: dict[int, datetime], now: datetime,
    ) -> float | None:
        """One event's failed attempt: its outcome, or the delay before it is tried again."""
        ins = self.instruments
        per_event = ins.per_event
        if isinstance(error, DatabaseStep):
            error = error.error
        first = first_failure.setdefault(id(item), now)
        if isinstance(error, Reject) or attempt >= limit:
            if per_event:
                ins.attempt_failed(item, error, attempt, None)
            reason = REASON_REJECTED if isinstance(error, Reject) else REASON_EXHAUSTED
            self._dead_letter(item, Failure.from_exception(
                reason, error, handler=handler.name, attempts=attempt, first_failure=first,
            ))
            return None
        wait = error.delay_s if isinstance(error, RetryLater) else backoff_delay(attempt, self.settings)
        item.retries += 1
        if handler.retry_topics:
            target = self._hand_off(item, attempt, wait, first, error)
            if per_event:
                ins.attempt_failed(item, error, attempt, wait, target)
                ins.event_finished(item)
            return None
        if per_event:
            ins.attempt_failed(item, error, attempt, wait)
        if not handler.batch:
            event, record = item.event, item.record
            assert event is not None
            log.warning(
                "event.retry_scheduled", event_id=bounded(event.id), event_type=bounded(event.type),
                topic=record.topic, partition=record.partition, offset=record.offset, handler=handler.name,
                attempt=attempt, max_attempts=limit, delay_s=round(wait, 3), error_type=type(error).__name__,
                error=bounded(str(error), 1000),
            )
        return wait

    def _interrupted(self, items: list[Item]) -> None:
        if self.instruments.per_event:
            for item in items:
                self.instruments.event_finished(item)  # (outcome None: interrupted)

    # -- outcomes without a successful handler -------------------------------------------

    def _hand_off(self, item: Item, attempts: int, delay: float, first_failure: datetime, error: Exception) -> str:
        """Republish a failed event to its next retry topic instead of waiting here; that topic."""
        r = item.record
        origin = item.origin or retrytopics.RetryState(
            topic=r.topic, partition=r.partition, offset=r.offset, timestamp=r.timestamp, attempts=0, due_ms=0,
            first_failure=first_failure,
        )
        due_ms = int((datetime.now(UTC).timestamp() + delay) * 1000)
        nxt = dataclasses.replace(origin, attempts=attempts, due_ms=due_ms)
        headers = retrytopics.handoff_headers(list(r.headers or ()), nxt, error=error)
        target = retrytopics.retry_topic(origin.topic, attempts)
        item.handoff = (target, r.key, r.value, headers)
        item.outcome = HANDED_OFF
        log.warning(
            "event.retry_handed_off", event_id=bounded(item.event.id) if item.event else None, topic=origin.topic,
            partition=origin.partition, offset=origin.offset, retry_topic=target, attempt=attempts,
            delay_s=round(delay, 3), error_type=type(error).__name__, error=bounded(str(error), 1000),
        )
        return target

    def _unknown(self, item: Item) -> None:
        event = item.event
        assert event is not None
        r = item.record
        if self.settings.on_unknown_type == "skip":
            item.outcome = SKIPPED
            log.info("event.unknown_type_skipped", event_id=bounded(event.id), event_type=bounded(event.type),
                     topic=r.topic, partition=r.partition, offset=r.offset)
            if self.instruments.per_event:
                self.instruments.event_finished(item)
            return
        known = sorted(self.app.handlers)
        error = UnknownEventType(event.type, known)
        message = f"no handler for event type {event.type!r} in app {self.app.name!r} (handled: {', '.join(known)})"
        self._dead_letter(item, Failure(
            reason=REASON_UNKNOWN_TYPE, error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            message=message,
        ))

    def _dead_letter(self, item: Item, failure: Failure) -> None:
        """Give ``item`` the outcome ``dead_lettered``: its letter is sent, then its row written."""
        item.outcome = DEAD_LETTERED
        item.failure = failure
        if self.instruments.per_event:
            self.instruments.event_finished(item)
        event = item.event
        topic, partition, offset, _ = item.position
        log.error(
            "event.dead_lettered", topic=topic, partition=partition, offset=offset,
            event_id=bounded(event.id) if event is not None else None,
            event_type=bounded(event.type) if event is not None else None,
            reason=failure.reason, error_type=failure.error_type, error=bounded(failure.message, 1000),
            attempts=failure.attempts,
        )


# -- strategies ----------------------------------------------------------------------


def _enter(stage: Handle, item: Item, attempt: int) -> tuple[Context, tuple[Any, Any, Any]]:
    """The event's context, made current: its span (if traced), its correlation, its log fields."""
    event, record, handler = item.event, item.record, item.handler
    assert event is not None and handler is not None
    ctx = Context(
        event, record.offset, record.topic, record.partition, stage.group, handler.name, attempt, stage.pool,
        stage.producer,
    )
    ins = stage.instruments
    active = ins.activate(item) if ins.per_event else None
    return ctx, (active, enter_cause(event.id, event.correlation_id or event.id), enter_work(ctx))


def _leave(stage: Handle, entered: tuple[Any, Any, Any]) -> None:
    active, cause, work = entered
    exit_work(work)
    exit_cause(cause)
    if active is not None:
        stage.instruments.deactivate(active)


async def _plain(stage: Handle, pending: list[Item], attempt: int) -> list[Exception | None] | None:
    """One call of a plain handler (the common case, kept lean: most of a no-op handler's cost)."""
    item = pending[0]
    ctx, entered = _enter(stage, item, attempt)
    event, handler = ctx.event, item.handler
    assert handler is not None
    try:
        await handler.func(event, ctx)
    except Exception as exc:
        return [exc]
    finally:
        _leave(stage, entered)
    return None


async def _transactional(stage: Handle, pending: list[Item], attempt: int) -> list[Exception | None] | None:
    """Claim the row and run the handler in one transaction; an event claimed before becomes a duplicate.

    Failures of eventq's own steps (connect, begin, claim, commit) come back as
    :class:`DatabaseStep`, so that only they, not the handler's errors, count as a
    database outage.
    """
    item = pending[0]
    ctx, entered = _enter(stage, item, attempt)
    event, handler = ctx.event, item.handler
    assert handler is not None
    try:
        try:
            conn = await stage.pool.acquire()
        except Exception as exc:
            return [DatabaseStep(exc)]
        try:
            transaction = conn.transaction()
            try:
                await transaction.start()
                claimed = await store.claim(
                    conn, stage.group,
                    store.Processed(event.id, ctx.topic, ctx.partition, ctx.offset, source=event.source),
                )
            except Exception as exc:
                return [DatabaseStep(exc)]
            if not claimed:
                await transaction.rollback()
                item.outcome = DUPLICATE
                return None
            ctx.db = conn
            ctx._outbox = stage.outbox  # noqa: SLF001 - follow-ups join the transaction
            try:
                await handler.func(event, ctx)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                if isinstance(exc, Exception):
                    return [exc]
                raise
            try:
                await transaction.commit()
            except Exception as exc:
                return [DatabaseStep(exc)]
            item.claimed = True
            stage.status.database_up()
            return None
        finally:
            await stage.pool.release(conn)
    finally:
        _leave(stage, entered)


async def _batch(stage: Handle, pending: list[Item], attempt: int) -> list[Exception | None] | None:
    """One call of a batch handler with the pending events; its failures by event id."""
    events = [item.event for item in pending]
    head = pending[0].record
    handler = pending[0].handler
    assert handler is not None
    ctx = BatchContext(
        events,  # type: ignore[arg-type]
        topic=head.topic, partition=head.partition, group=stage.group, handler=handler.name,
        attempt=attempt, db=stage.pool, producer=stage.producer,
    )
    work = enter_work(ctx)
    try:
        failures = dict(await handler.func(events, ctx) or {})
    except Exception as exc:
        return [exc] * len(pending)
    finally:
        exit_work(work)
    if not failures:
        return None
    return [failures.get(item.event.id) if item.event is not None else None for item in pending]
