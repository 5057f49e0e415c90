"""Log lines that say which event, where, and in which trace.

:func:`add_event_context` is a structlog processor: every line logged while an event
is being handled (by eventq or by the handler, through any structlog logger) gets
``event_id``, ``event_type``, ``correlation_id``, ``topic``, ``partition``,
``offset``, ``consumer_group``, ``handler`` and ``attempt``; every line logged inside
an active span gets ``trace_id`` and ``span_id``. Values passed explicitly win.
Applications that configure structlog themselves can add the same processor.

:func:`configure_logging` is what the CLI calls (the library never configures
logging): JSON lines, or a readable console on a terminal; the standard library's
loggers (aiokafka, asyncpg) are rendered the same way, from WARNING up (or ``level``
if higher), and a message they repeat (aiokafka logs every reconnect attempt) is shown
at most once per 30 s. What aiokafka normally complains about while a fresh broker or
consumer starts (the group coordinator not available yet, a new topic not yet in its
metadata) is shown as one info line (``kafka.coordinator_not_ready``) during the first
60 s, not as an error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, WrappedLogger

from eventq.redact import redact_processor

# The work being done in this context: a consumer Context or BatchContext.
_current: ContextVar[Any] = ContextVar("eventq_log_context", default=None)

REPEAT_WINDOW_S = 30.0


def enter_work(ctx: Any) -> Token[Any]:
    """Log lines from now on (in this context) describe ``ctx``'s event (the consumer's hot path)."""
    return _current.set(ctx)


def exit_work(token: Token[Any]) -> None:
    _current.reset(token)


FIELD_LIMIT = 200  # characters of one record-derived field in a log line


def bounded(value: str | None, limit: int = FIELD_LIMIT) -> str | None:
    """``value`` cut to ``limit`` characters (with a marker saying how long it was): fields
    that come from records are logged bounded, however large the record made them."""
    if value is None or len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value)} chars]"


def add_event_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add the current event's fields and the active span's ids."""
    ctx = _current.get()
    if ctx is not None:
        setdefault = event_dict.setdefault
        event = getattr(ctx, "event", None)
        if event is not None:
            setdefault("event_id", bounded(event.id))
            setdefault("event_type", bounded(event.type))
            setdefault("correlation_id", bounded(event.correlation_id))
            setdefault("offset", ctx.offset)
        setdefault("topic", ctx.topic)
        setdefault("partition", ctx.partition)
        setdefault("consumer_group", ctx.group)
        setdefault("handler", ctx.handler)
        setdefault("attempt", ctx.attempt)
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(span_context.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(span_context.span_id))
    return event_dict


class _OncePerWindow(logging.Filter):
    """Let a repeated stdlib message (same logger, same template) through once per window."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self._window_s = window_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._window_s:
            return False
        self._last[key] = now
        return True


STARTUP_GRACE_S = 60.0

# aiokafka's own (logger, message template) for what it normally logs at warning or error level
# while it retries by itself at start-up (aiokafka/consumer/group_coordinator.py,
# aiokafka/cluster.py), and the event name shown instead.
_COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_LOOKUP_FAILED = "Group Coordinator Request failed: %s"
_MARKED_DEAD = "Marking the coordinator dead (node %s)for group %s."
_TOPIC_UNKNOWN = "Topic %s not found in cluster metadata"
_STARTUP_NOISE = {
    (_COORDINATOR_LOGGER, _LOOKUP_FAILED): "kafka.coordinator_not_ready",
    (_COORDINATOR_LOGGER, _MARKED_DEAD): "kafka.coordinator_not_ready",
    ("aiokafka.cluster", _TOPIC_UNKNOWN): "kafka.topic_not_in_metadata_yet",
}
# The coordinator lookup errors that mean "not set up yet" (a fresh broker creates
# __consumer_offsets on the first lookup); any other, such as a refused connection, stays an error.
_COORDINATOR_NOT_READY = frozenset(
    {"GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError", "GroupLoadInProgressError"}
)


class _StartupNoise(logging.Filter):
    """Turn aiokafka's known start-up complaints into an info line (or drop them above INFO).

    Only for ``grace_s`` after it is created: later the same messages mean a real problem
    and pass unchanged. Must run before :class:`_OncePerWindow`, which then shows each
    event once per window.
    """

    def __init__(
        self, level: int, grace_s: float = STARTUP_GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._show = level <= logging.INFO
        self._clock = clock
        self._until = clock() + grace_s

    def filter(self, record: logging.LogRecord) -> bool:
        event = _STARTUP_NOISE.get((record.name, str(record.msg)))
        if event is None or self._clock() > self._until:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        fields: dict[str, Any] = {"detail": record.getMessage()}
        if record.msg == _LOOKUP_FAILED:
            error = type(args[0]).__name__ if args else ""
            if error not in _COORDINATOR_NOT_READY:
                return True
            fields["error"] = error
        elif record.msg == _MARKED_DEAD and len(args) == 2:
            fields["group"] = args[1]
        elif record.msg == _TOPIC_UNKNOWN and args:
            fields["topic"] = args[0]
        if not self._show:
            return False
        record.__dict__.update(fields)  # rendered as key/value fields (ExtraAdder)
        record.msg, record.args = event, ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(*, json_logs: bool | None = None, level: str = "INFO") -> None:
    """JSON lines when not on a terminal (or asked), readable console otherwise; stdlib logs alike."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    renderer: Any = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_event_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # redact_processor last: it must also see the formatted traceback (eventq/redact.py).
        processors=[*shared, structlog.processors.format_exc_info, redact_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Not cached: handlers log rarely, and tests can then capture every logger.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_processor,
                renderer,
            ],
        )
    )
    handler.addFilter(_StartupNoise(number))  # before _OncePerWindow: it renames what it demotes
    handler.addFilter(_OncePerWindow())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Other libraries (aiokafka, asyncpg) log below WARNING mostly noise: they start there.
    root.setLevel(max(number, logging.WARNING))
