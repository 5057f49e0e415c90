"""The spans eventq makes, after the OpenTelemetry messaging conventions.

One event's journey is one trace (docs/adr/0010-tracing-model.md):

=============================  =========  ===============================================
span                           kind       parent / links
=============================  =========  ===============================================
``send {topic}``               PRODUCER   the caller's active span (a handler's, for
                                          follow-up events); one per ``publish``
``send {topic}`` (batch)       PRODUCER   the caller's span; links to each ``create``
``create {topic}``             PRODUCER   the caller's span; one per event of
                                          ``publish_many`` (the event's creation context)
``process {topic}``            CONSUMER   none (a new trace); one per partition slice of
                                          a fetched batch, linked to every event's
                                          creation context
``handle {type}``              CONSUMER   the event's creation context (its
                                          ``traceparent``); linked to ``process``
``send {topic}.dlt``           PRODUCER   the ``handle`` span that dead-lettered the event
``replay {dlt topic}``         INTERNAL   none; one per ``eventq dlq replay`` run
``send {topic}`` (replayed)    PRODUCER   the dead letter's ``send`` span; linked to
                                          ``replay``
``commit``                     CLIENT     none; linked to the ``process`` spans committed
=============================  =========  ===============================================

Retries, skipped duplicates and dead-lettering are span events on ``handle``. With
no OpenTelemetry SDK tracer provider, :attr:`Tracing.enabled` is False and callers
skip all of this; only an already active span context is propagated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventq.version import __version__
from eventq.wire import H_TRACEPARENT, H_TRACESTATE

if TYPE_CHECKING:
    from eventq.schemas.envelope import Event

# Attribute names (messaging semantic conventions, plus a few of eventq's own).
SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
GROUP = "messaging.consumer.group.name"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BATCH_COUNT = "messaging.batch.message_count"
EVENT_TYPE = "cloudevents.event_type"
ERROR_TYPE = "error.type"
OUTCOME = "eventq.outcome"
HANDLER = "eventq.handler"
ATTEMPTS = "eventq.attempts"
DEAD_LETTER_REASON = "eventq.dead_letter.reason"
REPLAY_RUN = "eventq.replay.run"
REPLAY_POSITION = "eventq.dead_letter.position"
REPLAYED = "eventq.replay.replayed"
RETRY_TOPIC = "eventq.retry_topic"
PARTITIONS = "eventq.partitions"

# Outcomes of a ``handle`` span.
HANDLED = "handled"
DUPLICATE = "duplicate"
DEAD_LETTERED = "dead_lettered"
SKIPPED = "skipped"
HANDED_OFF = "retry_handed_off"
INTERRUPTED = "interrupted"

_W3C = TraceContextTextMapPropagator()
_EMPTY = otel_context.Context()
_HEX = frozenset("0123456789abcdef")


def context_from_traceparent(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context | None:
    """The remote span context a W3C ``traceparent`` names, as a parent Context; None if absent or invalid."""
    if not traceparent:
        return None
    if (
        tracestate is None and len(traceparent) == 55 and traceparent[:3] == "00-"
        and traceparent[35] == traceparent[52] == "-" and _HEX.issuperset(traceparent[3:35] + traceparent[36:52])
        and _HEX.issuperset(traceparent[53:])
    ):
        # The common case, once per consumed event: the propagator's regex costs twice this.
        parsed = SpanContext(
            int(traceparent[3:35], 16), int(traceparent[36:52], 16), is_remote=True,
            trace_flags=TraceFlags(int(traceparent[53:55], 16)),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(parsed), _EMPTY) if parsed.is_valid else None
    carrier = {H_TRACEPARENT: traceparent}
    if tracestate:
        carrier[H_TRACESTATE] = tracestate
    ctx = _W3C.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def span_context_of(ctx: otel_context.Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def trace_headers(span: Span | None = None) -> list[tuple[str, bytes]]:
    """W3C ``traceparent``/``tracestate`` headers for ``span`` (default: the active span); [] if none."""
    current = span if span is not None else trace.get_current_span()
    if not current.get_span_context().is_valid:
        return []
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(current))
    return [(name, value.encode()) for name, value in carrier.items()]


def traceparent_of(span: Span) -> str | None:
    """``span``'s context as a W3C ``traceparent`` value (None if it has no valid context)."""
    for name, value in trace_headers(span):
        if name == H_TRACEPARENT:
            return value.decode()
    return None


def fail(span: Span, error: BaseException | str, *, error_type: str | None = None) -> None:
    """Mark ``span`` failed (status ERROR and ``error.type``); exceptions are recorded as span events."""
    if isinstance(error, BaseException):
        span.record_exception(error)
        error_type = error_type or type(error).__qualname__
    span.set_attribute(ERROR_TYPE, error_type or "error")
    span.set_status(Status(StatusCode.ERROR, str(error)))


def end_failed(span: Span | None, error: BaseException | str) -> None:
    """Mark ``span`` failed and end it (nothing when there is no span: tracing off)."""
    if span is not None:
        fail(span, error)
        span.end()


def retry_attributes(
    attempt: int, delay_s: float, error: BaseException, retry_topic: str | None = None
) -> dict[str, Any]:
    """The attributes of a ``retry_scheduled`` / ``retry_handed_off`` span event."""
    attributes: dict[str, Any] = {
        "attempt": attempt, "delay_s": round(delay_s, 3), ERROR_TYPE: type(error).__qualname__,
    }
    if retry_topic is not None:
        attributes[RETRY_TOPIC] = retry_topic
    return attributes


def set_outcome(span: Span, outcome: str, attempts: int | None = None) -> None:
    """Note on a ``handle`` span how its event ended (and after how many attempts)."""
    span.set_attributes({OUTCOME: outcome} if attempts is None else {OUTCOME: outcome, ATTEMPTS: attempts})


def dead_lettered(span: Span, reason: str, error_type: str, message: str, attempts: int) -> None:
    """Note on a ``handle`` span that its event was dead-lettered, and why."""
    set_outcome(span, DEAD_LETTERED, attempts)
    span.add_event("dead_lettered", {DEAD_LETTER_REASON: reason, ERROR_TYPE: error_type})
    span.set_status(Status(StatusCode.ERROR, message))


class Tracing:
    """Starts eventq's spans on one tracer provider (default: the global one).

    :attr:`enabled` says whether spans are recorded at all; callers check it once per
    batch (or publish) and skip span work when it is False.
    """

    __slots__ = ("_explicit", "_tracer")

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._explicit = provider
        # A tracer from the global provider follows it even if it is set later.
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("eventq", __version__)

    @property
    def enabled(self) -> bool:
        provider = self._explicit or trace.get_tracer_provider()
        return not isinstance(provider, trace.NoOpTracerProvider | trace.ProxyTracerProvider)

    def drops_unsampled_remote_parents(self) -> bool:
        """True if the SDK sampler is parent-based and never records a child of an unsampled remote parent
        (OpenTelemetry's default sampler): a consumer need not start spans it would drop anyway."""
        from opentelemetry.sdk.trace import sampling

        sampler = getattr(self._tracer, "sampler", None)
        return isinstance(sampler, sampling.ParentBased) and (
            getattr(sampler, "_remote_parent_not_sampled", None) is sampling.ALWAYS_OFF
        )

    # -- producing ---------------------------------------------------------------

    def send(self, topic: str, event: Event) -> Span:
        """The ``send {topic}`` span of one published event (a child of the active span)."""
        return self._tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=_event_attributes(
            "send", topic, event))

    def create(self, topic: str, event: Event) -> Span:
        """The ``create {topic}`` span of one event of a batch publish: its creation context."""
        return self._tracer.start_span(f"create {topic}", kind=SpanKind.PRODUCER, attributes=_event_attributes(
            "create", topic, event))

    def send_batch(self, topic: str, created: Sequence[Span]) -> Span:
        """The ``send {topic}`` span of a batch publish, linked to each event's ``create`` span."""
        return self._tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER,
            attributes=_attributes("send", topic, {BATCH_COUNT: len(created)}),
            links=[Link(span.get_span_context()) for span in created],
        )

    def relay_send(self, topic: str, creations: Sequence[SpanContext]) -> Span:
        """The ``send {topic}`` span of an outbox relay's batch, linked to each event's stored creation context."""
        return self._tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, context=otel_context.Context(),
            attributes=_attributes("send", topic, {BATCH_COUNT: len(creations)}, name="relay"),
            links=[Link(sc) for sc in creations],
        )

    # -- consuming ---------------------------------------------------------------

    def process(self, topic: str, partition: int, group: str, creations: Iterable[SpanContext]) -> Span:
        """The ``process {topic}`` span of one partition's slice, linked to every event's creation context."""
        links = [Link(sc) for sc in creations]
        return self._tracer.start_span(
            f"process {topic}", kind=SpanKind.CONSUMER, context=otel_context.Context(),
            attributes=_attributes(
                "process", topic, {PARTITION: str(partition), GROUP: group, BATCH_COUNT: len(links)}
            ),
            links=links,
        )

    def handle(
        self, event: Event, record: Any, group: str, handler: str | None, parent: otel_context.Context | None,
        batch: SpanContext | None,
    ) -> Span:
        """The ``handle {type}`` span of one event: a child of its creation context, linked to the batch."""
        attributes = _event_attributes("process", record.topic, event, name="handle")
        attributes[PARTITION] = str(record.partition)
        attributes[GROUP] = group
        attributes[OFFSET] = record.offset
        if handler is not None:
            attributes[HANDLER] = handler
        links = [Link(batch)] if batch is not None and batch.is_valid else []
        return self._tracer.start_span(
            f"handle {event.type}", kind=SpanKind.CONSUMER, context=parent or otel_context.Context(),
            attributes=attributes, links=links,
        )

    def dead_letter(self, topic: str, parent: SpanContext | None, reason: str) -> Span:
        """The ``send {topic}`` span of a dead letter, a child of the span that failed the event."""
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
        return self._tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, context=ctx,
            attributes=_attributes("send", topic, {DEAD_LETTER_REASON: reason}),
        )

    def commit(self, processed: Sequence[SpanContext], partitions: int) -> Span:
        """The ``commit`` span of one offset commit, linked to the slices it commits."""
        return self._tracer.start_span(
            "commit", kind=SpanKind.CLIENT, context=otel_context.Context(),
            attributes={SYSTEM: "kafka", OPERATION_TYPE: "settle", OPERATION_NAME: "commit",
                        PARTITIONS: partitions},
            links=[Link(sc) for sc in processed],
        )

    # -- replaying ---------------------------------------------------------------

    def replay(self, dead_letter_topic: str, run: str) -> Span:
        """The root span of one ``eventq dlq replay`` run."""
        return self._tracer.start_span(
            f"replay {dead_letter_topic}", kind=SpanKind.INTERNAL, context=otel_context.Context(),
            attributes={DESTINATION: dead_letter_topic, REPLAY_RUN: run},
        )

    def replay_send(
        self, topic: str, parent: otel_context.Context | None, run: SpanContext, attributes: dict[str, Any]
    ) -> Span:
        """The ``send {topic}`` span of one replayed letter: in the event's trace, linked to the run."""
        return self._tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, context=parent or otel_context.Context(),
            attributes=_attributes("send", topic, attributes, name="replay"),
            links=[Link(run)],
        )


def _attributes(operation: str, topic: str, extra: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """The messaging attributes every span on a topic has, plus ``extra``."""
    return {
        SYSTEM: "kafka", OPERATION_TYPE: operation, OPERATION_NAME: name or operation, DESTINATION: topic, **extra,
    }


def _event_attributes(operation: str, topic: str, event: Event, *, name: str | None = None) -> dict[str, Any]:
    attributes = _attributes(operation, topic, {
        MESSAGE_ID: event.id, CONVERSATION_ID: event.correlation_id or event.id, EVENT_TYPE: event.type,
    }, name=name)
    if event.key is not None:
        attributes[KEY] = event.key
    return attributes
