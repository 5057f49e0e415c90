"""Running the handlers of one partition's slice of a batch: retries, then dead letters.

Given the records of one partition (in offset order) and the ids the consumer group
already finished, :meth:`Processor.run` returns what must happen before the slice's
offsets can be committed: the ``processed_events`` rows to write and the dead letters
to publish. It guarantees:

- a handler runs only for events not already finished by the group (and once per
  event id within the slice);
- with ``ordering="partition"`` events run one after another in offset order; with
  ``ordering="key"`` events of different keys run concurrently (at most
  ``max_concurrency`` at a time) while each key's events keep their order;
- a failing event is retried up to its attempt limit with exponential back-off and
  jitter (or the delay of :class:`~eventq.errors.RetryLater`) while other partitions
  go on; :class:`~eventq.errors.Reject` dead-letters at once;
- every record ends as exactly one of: a row (handled / skipped), a dead letter (plus a
  row when it has an event id), or already finished. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from eventq.consumers import retrytopics, store
from eventq.consumers.app import App, Handler
from eventq.consumers.context import BatchContext, Context
from eventq.consumers.deadletter import (
    REASON_EXHAUSTED,
    REASON_INVALID,
    REASON_REJECTED,
    REASON_UNDECODABLE,
    REASON_UNKNOWN_TYPE,
    DeadLetter,
    Failure,
)
from eventq.consumers.health import Status
from eventq.consumers.settings import ConsumerSettings
from eventq.consumers.slices import Interrupt, Item, SliceResult, is_replayed
from eventq.database import answers, is_outage
from eventq.errors import EventqError, InvalidEvent, Reject, RetryLater, UndecodableRecord, UnknownEventType
from eventq.producers.producer import Producer
from eventq.schemas.correlation import caused_by, enter_cause, exit_cause
from eventq.telemetry import tracing as tr
from eventq.telemetry.logs import bounded, enter_work, exit_work

log = structlog.get_logger("eventq.consumer")


class _DatabaseStep(Exception):
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


class Processor:
    """Runs handlers for partition slices; shared by every partition of one daemon."""

    def __init__(
        self,
        *,
        app: App,
        settings: ConsumerSettings,
        group: str,
        producer: Producer,
        pool: Any,
        status: Status,
        tracing: tr.Tracing | None = None,
    ) -> None:
        self.app = app
        self.tracing = tracing or tr.Tracing()
        self.settings = settings
        self.group = group
        self.producer = producer
        self.pool = pool
        self.status = status
        self.retry_topics: frozenset[str] = frozenset()  # set by the daemon

    async def run(
        self,
        items: Sequence[Item],
        seen: Mapping[store.Identity, str] | AbstractSet[store.Identity],
        interrupt: Interrupt | None = None,
    ) -> SliceResult:
        """Process one partition's records (offset order); see the module docstring.

        ``seen`` maps the (id, source) of events the group already finished to their outcome: those events
        are skipped, except a replayed dead letter whose row says ``dead_lettered``. If
        ``interrupt`` is set, no further handler starts; ``next_offset`` of the result
        then points at the first unfinished record.
        """
        if not isinstance(seen, Mapping):
            seen = dict.fromkeys(seen, "handled")
        result = SliceResult()
        if self.tracing.enabled:
            # The caller's active span is the slice's ``process`` span.
            result.span = trace.get_current_span().get_span_context()
        todo: list[Item] = []
        in_slice: set[store.Identity] = set()
        stop = interrupt or Interrupt()
        for item in items:
            event = item.event
            if item.invalid is None and item.record.topic in self.retry_topics and (
                retrytopics.parse(item.record.headers or (), topic=item.record.topic) is None
            ):
                # Only eventq writes retry topics; a record there without a sound retry state
                # (forged, or from another producer) is bad input, not an event to retry.
                item.invalid = InvalidEvent(
                    f"record in retry topic {item.record.topic} has no valid eventq-retry-* headers"
                )
            identity = (event.id, event.source) if event is not None else None
            outcome = seen.get(identity) if identity is not None else None
            if identity is not None and (
                (outcome is not None and not (outcome == "dead_lettered" and is_replayed(item.record)))
                or identity in in_slice
            ):
                result.duplicates += 1
                item.done = True
                if result.span is not None:
                    self._handle_span(item, result).end()
            elif identity is None or item.invalid is not None:
                if identity is not None:
                    in_slice.add(identity)
                span = self._handle_span(item, result) if result.span is not None and event is not None else None
                invalid = item.invalid or EventqError()
                reason = REASON_UNDECODABLE if isinstance(invalid, UndecodableRecord) else REASON_INVALID
                failure = Failure.from_exception(reason, invalid)
                self._dead_letter(result, item, failure, span=span, end=True)
                item.done = True
            else:
                assert identity is not None
                in_slice.add(identity)
                if item.handler is None:
                    span = self._handle_span(item, result) if result.span is not None else None
                    self._unknown(result, item, span)
                    item.done = True
                else:
                    todo.append(item)
        if self.settings.ordering == "key":
            groups: dict[Any, list[Item]] = {}
            for item in todo:
                key = item.record.key
                groups.setdefault(key if key is not None else object(), []).append(item)
            limit = asyncio.Semaphore(self.settings.max_concurrency)

            async def one_key(chain: list[Item]) -> None:
                async with limit:
                    await self._run_in_order(chain, result, stop)

            await asyncio.gather(*(one_key(chain) for chain in groups.values()))
        else:
            await self._run_in_order(todo, result, stop)
        unfinished = next((item for item in items if not item.done), None)
        result.next_offset = unfinished.record.offset if unfinished is not None else items[-1].record.offset + 1
        return result

    async def _run_in_order(self, items: list[Item], result: SliceResult, stop: Interrupt) -> None:
        i = 0
        while i < len(items):
            if stop.requested:
                return
            handler = items[i].handler
            assert handler is not None
            if handler.batch:
                j = i + 1
                while j < len(items) and items[j].handler is handler:
                    j += 1
                await self._run_batch(handler, items[i:j], result, stop)
                i = j
            elif handler.transactional or items[i].record.topic in self.retry_topics:
                items[i].done = await self._run_one(handler, items[i], result, stop)
                i += 1
            else:
                # The common case, kept lean (it is most of a no-op handler's cost):
                # one attempt; only a failure takes the retrying path.
                item = items[i]
                event = item.event
                record = item.record
                assert event is not None
                ctx = Context(
                    event, record.offset, record.topic, record.partition, self.group, handler.name, 1, self.pool,
                    self.producer,
                )
                span = self._handle_span(item, result, handler) if result.span is not None else None
                attached = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
                token = enter_cause(event.id, event.correlation_id or event.id)
                work = enter_work(ctx)
                error: Exception | None = None
                try:
                    await handler.func(event, ctx)
                except Exception as exc:
                    error = exc
                except BaseException as exc:  # cancelled: abandoned, delivered again later
                    if span is not None:
                        tr.set_outcome(span, tr.INTERRUPTED)
                    tr.end_failed(span, exc)
                    raise
                finally:
                    exit_work(work)
                    exit_cause(token)
                    if attached is not None:
                        otel_context.detach(attached)
                if error is not None:
                    item.done = await self._run_one(handler, item, result, stop, first_error=error, span=span)
                else:
                    if span is not None:
                        tr.set_outcome(span, tr.HANDLED, 1)
                        span.end()
                    result.rows.append(
                        store.Processed(event.id, record.topic, record.partition, record.offset, source=event.source)
                    )
                    result.handled += 1
                    item.done = True
                i += 1

    async def _run_one(
        self,
        handler: Handler,
        item: Item,
        result: SliceResult,
        stop: Interrupt,
        *,
        first_error: Exception | None = None,
        span: Span | None = None,
    ) -> bool:
        """Attempt the handler until it succeeds, rejects or runs out of attempts; False if interrupted.

        ``first_error`` is the failure of an attempt 1 made by the caller's fast path,
        ``span`` the ``handle`` span it started. With tracing on, all of it happens
        inside the event's ``handle`` span, which this ends.
        """
        work = enter_work(None)  # _attempts sets each attempt's context
        try:
            if span is None and result.span is None:  # tracing off
                return await self._attempts(handler, item, result, stop, first_error)
            if span is None:
                span = self._handle_span(item, result, handler)
            done = False
            with trace.use_span(span, end_on_exit=True):
                try:
                    done = await self._attempts(handler, item, result, stop, first_error)
                finally:
                    if not done:
                        tr.set_outcome(span, tr.INTERRUPTED)
            return done
        finally:
            exit_work(work)

    async def _attempts(
        self, handler: Handler, item: Item, result: SliceResult, stop: Interrupt, first_error: Exception | None
    ) -> bool:
        event = item.event
        assert event is not None
        record = item.record
        limit = handler.max_attempts or self.settings.max_attempts
        first_failure: datetime | None = None
        attempt = 1
        pending_error = first_error
        state = (
            retrytopics.parse(record.headers or (), topic=record.topic) if record.topic in self.retry_topics else None
        )
        if state is not None:
            if await stop.sleep(state.seconds_until_due()):
                return False
            attempt, first_failure = state.attempts + 1, state.first_failure
        while True:
            ctx = Context(
                event, record.offset, record.topic, record.partition, self.group, handler.name, attempt, self.pool,
                self.producer,
            )
            enter_work(ctx)  # (the token of _run_one's enter_work restores the outer context)
            try:
                if pending_error is not None:
                    error, pending_error = pending_error, None
                    raise error
                with caused_by(event.id, event.correlation_id or event.id):
                    if handler.transactional:
                        if not await self._run_transactional(handler, item, ctx):
                            result.duplicates += 1
                            _outcome(result, tr.DUPLICATE, attempt, "duplicate_skipped")
                            return True
                    else:
                        await handler.func(event, ctx)
            except asyncio.CancelledError:
                raise
            except Reject as exc:
                trace.get_current_span().record_exception(exc)
                failure = self._failure(REASON_REJECTED, exc, handler, attempt, first_failure)
                self._dead_letter(result, item, failure, state, span=trace.get_current_span())
                return True
            except Exception as caught:
                error = caught.error if isinstance(caught, _DatabaseStep) else caught
                if is_outage(error) and (
                    isinstance(caught, _DatabaseStep)
                    or not self.status.database_answers  # the daemon's own probe (busy pool or not)
                    or not await answers(self.pool)
                ):
                    # The database, not the handler, failed (eventq's own step, or the handler's
                    # query while eventq's database does not answer either): wait for it
                    # without using up attempts, then run the same attempt again.
                    await self.status.database_down(error)
                    if stop.requested:
                        return False
                    continue
                now = datetime.now(UTC)
                first_failure = first_failure or now
                span = trace.get_current_span()
                span.record_exception(error)
                if attempt >= limit:
                    failure = self._failure(REASON_EXHAUSTED, error, handler, attempt, first_failure)
                    self._dead_letter(result, item, failure, state, span=span)
                    return True
                delay = error.delay_s if isinstance(error, RetryLater) else backoff_delay(attempt, self.settings)
                result.retries += 1
                if handler.retry_topics:
                    target = self._hand_off(result, item, state, attempt, delay, first_failure, error)
                    span.add_event("retry_handed_off", tr.retry_attributes(attempt, delay, error, target))
                    _outcome(result, tr.HANDED_OFF, attempt)
                    return True
                span.add_event("retry_scheduled", tr.retry_attributes(attempt, delay, error))
                log.warning(
                    "event.retry_scheduled", event_id=bounded(event.id), event_type=bounded(event.type),
                    topic=record.topic, partition=record.partition, offset=record.offset, handler=handler.name,
                    attempt=attempt, max_attempts=limit, delay_s=round(delay, 3), error_type=type(error).__name__,
                    error=bounded(str(error), 1000),
                )
                if await stop.sleep(delay):
                    return False
                attempt += 1
                continue
            _outcome(result, tr.HANDLED, attempt)
            if handler.transactional:
                self.status.database_up()
            elif state is not None:
                result.rows.append(
                    store.Processed(event.id, state.topic, state.partition, state.offset, source=event.source)
                )
            else:
                result.rows.append(
                    store.Processed(event.id, record.topic, record.partition, record.offset, source=event.source)
                )
            result.handled += 1
            return True

    def _hand_off(
        self,
        result: SliceResult,
        item: Item,
        state: retrytopics.RetryState | None,
        attempts: int,
        delay: float,
        first_failure: datetime,
        error: Exception,
    ) -> str:
        """Republish a failed event to its next retry topic instead of waiting here; that topic."""
        r = item.record
        origin = state or retrytopics.RetryState(
            topic=r.topic, partition=r.partition, offset=r.offset, timestamp=r.timestamp, attempts=0, due_ms=0,
            first_failure=first_failure,
        )
        due_ms = int((datetime.now(UTC).timestamp() + delay) * 1000)
        nxt = dataclasses.replace(origin, attempts=attempts, due_ms=due_ms)
        headers = retrytopics.handoff_headers(list(r.headers or ()), nxt, error=error)
        target = retrytopics.retry_topic(origin.topic, attempts)
        result.handoffs.append((target, r.key, r.value, headers))
        log.warning(
            "event.retry_handed_off", event_id=bounded(item.event.id) if item.event else None, topic=origin.topic,
            partition=origin.partition, offset=origin.offset, retry_topic=target, attempt=attempts,
            delay_s=round(delay, 3), error_type=type(error).__name__, error=bounded(str(error), 1000),
        )
        return target

    async def _run_transactional(self, handler: Handler, item: Item, ctx: Context) -> bool:
        """Claim the row and run the handler in one transaction; False if already claimed.

        Failures of eventq's own steps (connect, begin, claim, commit) are raised as
        :class:`_DatabaseStep`, so that only they, not the handler's errors, can count as
        a database outage.
        """
        event = item.event
        assert event is not None
        record = item.record
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            raise _DatabaseStep(exc) from exc
        try:
            transaction = conn.transaction()
            try:
                await transaction.start()
                claimed = await store.claim(
                    conn, self.group,
                    store.Processed(event.id, record.topic, record.partition, record.offset, source=event.source),
                )
            except Exception as exc:
                raise _DatabaseStep(exc) from exc
            if not claimed:
                await transaction.rollback()
                return False
            ctx.db = conn
            try:
                await handler.func(event, ctx)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except Exception as exc:
                raise _DatabaseStep(exc) from exc
            return True
        finally:
            await self.pool.release(conn)

    async def _run_batch(self, handler: Handler, items: list[Item], result: SliceResult, stop: Interrupt) -> None:
        spans: dict[str, Span] = {}
        if result.span is not None:
            spans = {item.event.id: self._handle_span(item, result, handler) for item in items if item.event}
        try:
            await self._batch_attempts(handler, items, result, stop, spans)
        except BaseException as exc:
            for span in spans.values():
                tr.fail(span, exc)
            raise
        finally:
            for span in spans.values():  # the events still pending: interrupted
                tr.set_outcome(span, tr.INTERRUPTED)
                span.end()

    async def _batch_attempts(
        self, handler: Handler, items: list[Item], result: SliceResult, stop: Interrupt, spans: dict[str, Span]
    ) -> None:
        """Call a batch handler with the pending events until none is left.

        Each event's span leaves ``spans`` when it ends.
        """
        limit = handler.max_attempts or self.settings.max_attempts
        pending = items
        first_failure: dict[str, datetime] = {}
        attempt = 1
        while pending:
            events = [item.event for item in pending]
            head = pending[0].record
            ctx = BatchContext(
                events,  # type: ignore[arg-type]
                topic=head.topic, partition=head.partition, group=self.group, handler=handler.name,
                attempt=attempt, db=self.pool, producer=self.producer,
            )
            work = enter_work(ctx)
            try:
                failures = dict(await handler.func(events, ctx) or {})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = {item.event.id: exc for item in pending if item.event is not None}
            finally:
                exit_work(work)
            retry: list[Item] = []
            delays: list[float] = []
            for item in pending:
                event = item.event
                assert event is not None
                error = failures.get(event.id)
                span = spans.get(event.id)
                if error is None:
                    r = item.record
                    result.rows.append(store.Processed(event.id, r.topic, r.partition, r.offset, source=event.source))
                    result.handled += 1
                    item.done = True
                    if span is not None:
                        del spans[event.id]
                        tr.set_outcome(span, tr.HANDLED, attempt)
                        span.end()
                    continue
                first = first_failure.setdefault(event.id, datetime.now(UTC))
                if span is not None:
                    span.record_exception(error)
                if isinstance(error, Reject) or attempt >= limit:
                    reason = REASON_REJECTED if isinstance(error, Reject) else REASON_EXHAUSTED
                    if span is not None:
                        del spans[event.id]
                    failure = self._failure(reason, error, handler, attempt, first)
                    self._dead_letter(result, item, failure, span=span, end=True)
                    item.done = True
                else:
                    retry.append(item)
                    delay = error.delay_s if isinstance(error, RetryLater) else backoff_delay(attempt, self.settings)
                    delays.append(delay)
                    if span is not None:
                        span.add_event("retry_scheduled", tr.retry_attributes(attempt, delay, error))
            if retry:
                result.retries += len(retry)
                delay = max(delays)
                log.warning(
                    "batch.retry_scheduled", topic=head.topic, partition=head.partition, handler=handler.name,
                    attempt=attempt, max_attempts=limit, failed=len(retry), delay_s=round(delay, 3),
                )
                if await stop.sleep(delay):
                    return
            pending = retry
            attempt += 1

    def _handle_span(self, item: Item, result: SliceResult, handler: Handler | None = None) -> Span:
        """Start ``item``'s ``handle`` span (tracing on): a child of its creation context, linked to the slice."""
        event = item.event
        assert event is not None
        span = self.tracing.handle(
            event, item.record, self.group, handler.name if handler else None, item.parent, result.span
        )
        if item.done:  # decided before any handler ran: a duplicate
            tr.set_outcome(span, tr.DUPLICATE)
            span.add_event("duplicate_skipped")
        return span

    def _unknown(self, result: SliceResult, item: Item, span: Span | None) -> None:
        event = item.event
        assert event is not None
        r = item.record
        if self.settings.on_unknown_type == "skip":
            result.rows.append(store.Processed(event.id, r.topic, r.partition, r.offset, "skipped", event.source))
            log.info("event.unknown_type_skipped", event_id=bounded(event.id), event_type=bounded(event.type),
                     topic=r.topic,
                     partition=r.partition, offset=r.offset)
            if span is not None:
                tr.set_outcome(span, tr.SKIPPED)
                span.end()
            return
        known = sorted(self.app.handlers)
        error = UnknownEventType(event.type, known)
        message = f"no handler for event type {event.type!r} in app {self.app.name!r} (handled: {', '.join(known)})"
        self._dead_letter(
            result, item,
            Failure(reason=REASON_UNKNOWN_TYPE, error_type=f"{type(error).__module__}.{type(error).__qualname__}",
                    message=message),
            span=span, end=True,
        )

    @staticmethod
    def _failure(
        reason: str, exc: BaseException, handler: Handler, attempts: int, first: datetime | None
    ) -> Failure:
        return Failure.from_exception(reason, exc, handler=handler.name, attempts=attempts, first_failure=first)

    def _dead_letter(
        self,
        result: SliceResult,
        item: Item,
        failure: Failure,
        state: retrytopics.RetryState | None = None,
        *,
        span: Span | None = None,
        end: bool = False,
    ) -> None:
        """Queue ``item``'s dead letter (and row).

        ``span`` is the event's ``handle`` span (if any): it records the dead-lettering,
        becomes the parent of the dead letter's ``send`` span, and is ended if ``end``.
        Without one (an undecodable record) the slice's ``process`` span is the parent.
        """
        r = item.record
        # A record from a retry topic is dead-lettered as the source record it was.
        topic, partition, offset, timestamp = (
            (state.topic, state.partition, state.offset, state.timestamp) if state is not None
            else (r.topic, r.partition, r.offset, r.timestamp)
        )
        headers = list(r.headers or ())
        if state is not None:
            headers = retrytopics.original_headers(headers)
        origin = span.get_span_context() if span is not None else None
        if origin is not None and origin.is_valid:
            assert span is not None
            tr.dead_lettered(span, failure.reason, failure.error_type, failure.message, failure.attempts)
            if end:
                span.end()
        else:
            origin = result.span
        result.letters.append(
            DeadLetter(
                topic=topic, partition=partition, offset=offset, timestamp=timestamp, key=r.key,
                value=r.value, headers=headers, group=self.group, failure=failure, span=origin,
            )
        )
        event = item.event
        if event is not None:
            # The row is written only after the broker acknowledged the dead letter.
            result.rows.append(store.Processed(event.id, topic, partition, offset, "dead_lettered", event.source))
        log.error(
            "event.dead_lettered", topic=topic, partition=partition, offset=offset,
            event_id=bounded(event.id) if event is not None else None,
            event_type=bounded(event.type) if event is not None else None,
            reason=failure.reason, error_type=failure.error_type, error=bounded(failure.message, 1000),
            attempts=failure.attempts,
        )


def _outcome(result: SliceResult, outcome: str, attempts: int, event: str | None = None) -> None:
    """Note on the active ``handle`` span how the event ended (nothing when tracing is off)."""
    if result.span is not None:
        span = trace.get_current_span()
        tr.set_outcome(span, outcome, attempts)
        if event is not None:
            span.add_event(event)
