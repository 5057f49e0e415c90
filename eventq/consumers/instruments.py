"""The one seam where the consumer pipeline reports what happens: traces, metrics, tests.

The stages call an :class:`Instruments` object at fixed points and never know what
is behind it. eventq ships three:

- :class:`Instruments` itself: does nothing (the default when tracing is off);
- :class:`Traced`: the spans of docs/adr/0010-tracing-model.md (``process`` per
  slice, ``handle`` per event, ``send …dlt`` per dead letter, ``commit``);
- :class:`Measured`: the metrics of :mod:`eventq.telemetry.metrics`, per slice.

:class:`Chain` combines them. Tests subclass :class:`Instruments` to crash the
process at a point (``after_handlers``, ``after_record``, ``before_commit``): an
exception raised from a crash point fails the slice before the next step, exactly
like a crash there, so its records are delivered again.

Per-event calls are made only when :attr:`Instruments.per_event` is True, so the
no-op and metrics-only seams cost nothing per event. Everything a span needs comes
from the :class:`~eventq.consumers.outcome.Item` and its outcome; an instrument
keeps its own state in ``Item.trace`` and ``Slice.trace``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext

from eventq.consumers.outcome import DEAD_LETTERED, DUPLICATE, Item, Slice
from eventq.telemetry import tracing as tr
from eventq.telemetry.metrics import ConsumerMetrics
from eventq.wire import DLT_TRACEPARENT

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> next offset


class Instruments:
    """No-op instruments: override what you need (``super()`` calls are not required)."""

    per_event = False  # whether the per-event methods below are called at all

    # -- per slice -------------------------------------------------------------------

    def slice_started(self, sl: Slice) -> None:
        """The slice's handlers are about to run."""

    def activate_slice(self, sl: Slice) -> Any:
        """Make the slice current while its handlers run; the token for :meth:`deactivate`."""
        return None

    def slice_finished(self, sl: Slice, error: BaseException | None) -> None:
        """Its rows and letters are written (or ``error`` failed it; it is fetched again)."""

    # -- per event (only if per_event) ----------------------------------------------

    def event_started(self, item: Item) -> None:
        """A handler is about to run for ``item`` (or its outcome was decided without one)."""

    def activate(self, item: Item) -> Any:
        """Make ``item`` current around its handler call; the token for :meth:`deactivate`."""
        return None

    def deactivate(self, token: Any) -> None:
        """Undo :meth:`activate` / :meth:`activate_slice`."""

    def attempt_failed(
        self, item: Item, error: BaseException, attempt: int, delay_s: float | None, retry_topic: str | None = None,
    ) -> None:
        """An attempt failed; retried after ``delay_s`` (in place, or via ``retry_topic``) unless None."""

    def event_finished(self, item: Item) -> None:
        """``item`` has its outcome (None: interrupted, delivered again)."""

    # -- dead letters and commits -------------------------------------------------------

    def letter_sending(self, item: Item | None, sl: Slice, topic: str) -> tuple[list[tuple[str, bytes]], Any]:
        """A dead letter of ``item`` goes to ``topic``: extra headers for it, and a token for :meth:`letter_sent`."""
        return [], None

    def letter_failed(self, token: Any, error: BaseException) -> None:
        """A send of the letter failed (it is sent again)."""

    def letter_sent(self, token: Any) -> None:
        """The broker acknowledged the letter (or the slice gave up on it)."""

    def commit_started(self, offsets: Offsets, slices: Sequence[Any]) -> Any:
        """A commit of ``offsets`` is about to be sent (``slices``: the tokens of the slices it covers)."""
        return None

    def commit_finished(self, token: Any, error: BaseException | None) -> None:
        """That commit ended."""

    def slice_token(self, sl: Slice) -> Any:
        """What a commit of ``sl`` is linked to (see :meth:`commit_started`); None for nothing."""
        return None

    # -- crash points (tests) -----------------------------------------------------------

    async def after_handlers(self, sl: Slice) -> None:
        """Handlers of a slice finished; nothing recorded or dead-lettered yet."""

    async def after_record(self, sl: Slice) -> None:
        """Dead letters acknowledged and rows recorded; the offset is not committed yet."""

    async def before_commit(self, offsets: Offsets) -> None:
        """About to commit these next-offsets, keyed by (topic, partition)."""


class Chain(Instruments):
    """Several instruments as one; each point calls them in order."""

    def __init__(self, *parts: Instruments) -> None:
        self.parts = [p for p in parts if type(p) is not Instruments]
        self.per_event = any(p.per_event for p in self.parts)
        self._eventful = [p for p in self.parts if p.per_event]

    @classmethod
    def of(cls, *parts: Instruments | None) -> Instruments:
        """The fewest objects that do the job: the single instrument, or a chain of several."""
        real = [p for p in parts if p is not None and type(p) is not Instruments]
        if not real:
            return Instruments()
        return real[0] if len(real) == 1 else cls(*real)

    def slice_started(self, sl: Slice) -> None:
        for p in self.parts:
            p.slice_started(sl)

    def activate_slice(self, sl: Slice) -> Any:
        return [(p, p.activate_slice(sl)) for p in self.parts]

    def slice_finished(self, sl: Slice, error: BaseException | None) -> None:
        for p in self.parts:
            p.slice_finished(sl, error)

    def event_started(self, item: Item) -> None:
        for p in self._eventful:
            p.event_started(item)

    def activate(self, item: Item) -> Any:
        return [(p, p.activate(item)) for p in self._eventful]

    def deactivate(self, token: Any) -> None:
        for p, t in reversed(token):
            p.deactivate(t)

    def attempt_failed(
        self, item: Item, error: BaseException, attempt: int, delay_s: float | None, retry_topic: str | None = None,
    ) -> None:
        for p in self._eventful:
            p.attempt_failed(item, error, attempt, delay_s, retry_topic)

    def event_finished(self, item: Item) -> None:
        for p in self._eventful:
            p.event_finished(item)

    def letter_sending(self, item: Item | None, sl: Slice, topic: str) -> tuple[list[tuple[str, bytes]], Any]:
        headers: list[tuple[str, bytes]] = []
        tokens = []
        for p in self.parts:
            extra, token = p.letter_sending(item, sl, topic)
            headers.extend(extra)
            tokens.append(token)
        return headers, tokens

    def letter_failed(self, token: Any, error: BaseException) -> None:
        for p, t in zip(self.parts, token, strict=True):
            p.letter_failed(t, error)

    def letter_sent(self, token: Any) -> None:
        for p, t in zip(self.parts, token, strict=True):
            p.letter_sent(t)

    def slice_token(self, sl: Slice) -> Any:
        return [p.slice_token(sl) for p in self.parts]

    def commit_started(self, offsets: Offsets, slices: Sequence[Any]) -> Any:
        return [p.commit_started(offsets, [s[i] for s in slices]) for i, p in enumerate(self.parts)]

    def commit_finished(self, token: Any, error: BaseException | None) -> None:
        for p, t in zip(self.parts, token, strict=True):
            p.commit_finished(t, error)

    async def after_handlers(self, sl: Slice) -> None:
        for p in self.parts:
            await p.after_handlers(sl)

    async def after_record(self, sl: Slice) -> None:
        for p in self.parts:
            await p.after_record(sl)

    async def before_commit(self, offsets: Offsets) -> None:
        for p in self.parts:
            await p.before_commit(offsets)


class Measured(Instruments):
    """The consumer's metrics, recorded once per slice from its outcomes."""

    def __init__(self, metrics: ConsumerMetrics) -> None:
        self.metrics = metrics

    def slice_started(self, sl: Slice) -> None:
        sl.started = time.perf_counter()

    def slice_finished(self, sl: Slice, error: BaseException | None) -> None:
        if error is not None:
            return
        finished = sl.next_offset - sl.first_offset  # the rest is fetched again
        self.metrics.slice_done(
            sl.topic, sl.partition, len(sl.items), finished, sl.duplicates, sl.retries,
            (item.failure.reason for item in sl.lettered if item.failure is not None),
            time.perf_counter() - sl.started,
        )


class Traced(Instruments):
    """The spans of ADR 0010, on ``tracing``'s provider."""

    per_event = True

    def __init__(self, tracing: tr.Tracing, group: str) -> None:
        self.tracing = tracing
        self.group = group
        # An event published in an unsampled trace gets no handle span: the sampler would drop it.
        # Its handler still runs inside the creation context, so follow-ups stay in that (unsampled) trace.
        self._skip_unsampled = tracing.drops_unsampled_remote_parents()

    # -- slices ------------------------------------------------------------------------

    def slice_started(self, sl: Slice) -> None:
        creations = []
        for item in sl.items:
            event = item.event
            if event is not None and event.traceparent:
                item.parent = parent = tr.context_from_traceparent(event.traceparent, event.tracestate)
                if parent is not None:
                    creations.append(tr.span_context_of(parent))
        sl.trace = self.tracing.process(sl.topic, sl.partition, self.group, creations)

    def activate_slice(self, sl: Slice) -> Any:
        return otel_context.attach(trace.set_span_in_context(sl.trace)) if sl.trace is not None else None

    def deactivate(self, token: Any) -> None:
        if token is not None:
            otel_context.detach(token)

    def slice_finished(self, sl: Slice, error: BaseException | None) -> None:
        span: Span | None = sl.trace
        if span is None:
            return
        if error is not None:
            tr.fail(span, error)
        span.end()

    def slice_token(self, sl: Slice) -> SpanContext | None:
        span: Span | None = sl.trace
        return span.get_span_context() if span is not None else None

    # -- events --------------------------------------------------------------------------

    def event_started(self, item: Item) -> None:
        event = item.event
        if event is None or item.trace is not None:
            return
        parent = item.parent
        if self._skip_unsampled and parent is not None and not tr.span_context_of(parent).trace_flags.sampled:
            return
        handler = item.handler
        process: Span | None = None
        # (The slice's process span is the one active while the stage runs.)
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            process = current
        item.trace = self.tracing.handle(
            event, item.record, self.group, handler.name if handler else None, item.parent,
            process.get_span_context() if process is not None else None,
        )

    def activate(self, item: Item) -> Any:
        span = item.trace
        if span is not None:
            return otel_context.attach(trace.set_span_in_context(span))
        return otel_context.attach(item.parent) if item.parent is not None else None

    def attempt_failed(
        self, item: Item, error: BaseException, attempt: int, delay_s: float | None, retry_topic: str | None = None,
    ) -> None:
        span: Span | None = item.trace
        if span is None:
            return
        span.record_exception(error)
        if delay_s is not None:
            name = "retry_handed_off" if retry_topic is not None else "retry_scheduled"
            span.add_event(name, tr.retry_attributes(attempt, delay_s, error, retry_topic))

    def event_finished(self, item: Item) -> None:
        if item.trace is None and item.event is not None:
            self.event_started(item)  # decided before any handler ran (duplicate, invalid, unknown)
        span: Span | None = item.trace
        if span is None:
            return
        outcome = item.outcome
        attempts = item.attempts or None
        if outcome is None:
            tr.set_outcome(span, tr.INTERRUPTED, attempts)
        elif outcome == DEAD_LETTERED:
            failure = item.failure
            assert failure is not None
            tr.dead_lettered(span, failure.reason, failure.error_type, failure.message, failure.attempts)
        else:
            tr.set_outcome(span, outcome, attempts)
            if outcome == DUPLICATE:
                span.add_event("duplicate_skipped")
        span.end()  # (its context stays on the item: a dead letter's send span is its child)

    # -- dead letters --------------------------------------------------------------------

    def letter_sending(self, item: Item | None, sl: Slice, topic: str) -> tuple[list[tuple[str, bytes]], Any]:
        # The handle span that dead-lettered the event; in an unsampled trace, its creation context;
        # without either (an undecodable record), the slice's process span.
        parent: SpanContext | None = None
        if item is not None and item.trace is not None:
            parent = item.trace.get_span_context()
        elif item is not None and item.parent is not None and self._skip_unsampled:
            parent = tr.span_context_of(item.parent)
        elif sl.trace is not None:
            parent = sl.trace.get_span_context()
        if parent is None:
            return [], None
        reason = item.failure.reason if item is not None and item.failure is not None else ""
        span = self.tracing.dead_letter(topic, parent, reason)
        traceparent = tr.traceparent_of(span)
        return ([(DLT_TRACEPARENT, traceparent.encode())] if traceparent is not None else []), span

    def letter_failed(self, token: Any, error: BaseException) -> None:
        if token is not None:
            token.add_event("send_failed", {tr.ERROR_TYPE: type(error).__qualname__})

    def letter_sent(self, token: Any) -> None:
        if token is not None:
            token.end()

    # -- commits ---------------------------------------------------------------------------

    def commit_started(self, offsets: Offsets, slices: Sequence[Any]) -> Any:
        linked = [sc for sc in slices if sc is not None]
        if not linked:
            return None
        span = self.tracing.commit(linked, len(offsets))
        return span, otel_context.attach(trace.set_span_in_context(span))

    def commit_finished(self, token: Any, error: BaseException | None) -> None:
        if token is None:
            return
        span, attached = token
        otel_context.detach(attached)
        if error is not None:
            tr.fail(span, error)
        span.end()
