"""Log lines carry the event being handled and the active span, and the CLI's logging renders them as JSON."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError, NotCoordinatorForGroupError
from opentelemetry.sdk.trace import TracerProvider

from eventq.telemetry.logs import (
    _OncePerWindow,
    _StartupNoise,
    add_event_context,
    configure_logging,
    enter_work,
    exit_work,
)


@dataclass(frozen=True)
class FakeEvent:
    id: str
    type: str
    correlation_id: str


@dataclass(frozen=True)
class FakeContext:
    """The attributes of a consumer Context that the log processor reads."""

    event: FakeEvent
    offset: int
    topic: str = "orders"
    partition: int = 3
    group: str = "orders-projector"
    handler: str = "project_order_paid"
    attempt: int = 1


@dataclass(frozen=True)
class FakeBatchContext:
    """The attributes of a BatchContext: events, but no single `event` and no offset."""

    events: list[FakeEvent] = field(default_factory=list)
    topic: str = "orders"
    partition: int = 5
    group: str = "orders-projector"
    handler: str = "project_in_bulk"
    attempt: int = 2


PAID = FakeEvent(id="0192f0a1-7c3e-7d2a-9b1e-3f5a8c2d4e61", type="demo.order.paid.v1", correlation_id="corr-1")
SHIPPED = FakeEvent(id="0192f0a1-8d4f-7e3b-8c2f-4a6b9d3e5f72", type="demo.order.shipped.v1", correlation_id="corr-2")
EVENT_FIELDS = {
    "event_id",
    "event_type",
    "correlation_id",
    "offset",
    "topic",
    "partition",
    "consumer_group",
    "handler",
    "attempt",
}


def processed(**event_dict: Any) -> dict[str, Any]:
    return dict(add_event_context(None, "info", {"event": "handler.done", **event_dict}))


def record(name: str, msg: str, *args: Any) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg, "args": args, "levelno": logging.ERROR})


# --- add_event_context --------------------------------------------------------------------


def test_outside_any_work_or_span_the_line_is_unchanged() -> None:
    """With no work entered and no active span, the processor adds nothing."""
    assert processed(topic="explicit") == {"event": "handler.done", "topic": "explicit"}


def test_inside_work_the_line_describes_the_event() -> None:
    """While an event's context is entered, a line gets the event's id, type, correlation id and position."""
    token = enter_work(FakeContext(event=PAID, offset=1042))
    try:
        line = processed()
    finally:
        exit_work(token)

    assert line == {
        "event": "handler.done",
        "event_id": PAID.id,
        "event_type": "demo.order.paid.v1",
        "correlation_id": "corr-1",
        "offset": 1042,
        "topic": "orders",
        "partition": 3,
        "consumer_group": "orders-projector",
        "handler": "project_order_paid",
        "attempt": 1,
    }


def test_explicit_values_win_over_the_work_context() -> None:
    """Fields passed explicitly to the log call are kept, not replaced by the context's."""
    token = enter_work(FakeContext(event=PAID, offset=1042))
    try:
        line = processed(topic="orders.retry", attempt=4, event_id="given")
    finally:
        exit_work(token)

    assert line["topic"] == "orders.retry"
    assert line["attempt"] == 4
    assert line["event_id"] == "given"
    assert line["event_type"] == "demo.order.paid.v1"


def test_batch_context_adds_only_where_and_who() -> None:
    """For a batch context (no single event) only topic, partition, group, handler and attempt are added."""
    token = enter_work(FakeBatchContext(events=[PAID, SHIPPED]))
    try:
        line = processed()
    finally:
        exit_work(token)

    assert line == {
        "event": "handler.done",
        "topic": "orders",
        "partition": 5,
        "consumer_group": "orders-projector",
        "handler": "project_in_bulk",
        "attempt": 2,
    }


def test_exit_work_restores_the_previous_context() -> None:
    """exit_work brings back the context entered before, and after the last one nothing is added."""
    outer = enter_work(FakeContext(event=PAID, offset=1))
    inner = enter_work(FakeContext(event=SHIPPED, offset=2))
    in_inner = processed()
    exit_work(inner)
    in_outer = processed()
    exit_work(outer)
    after = processed()

    assert (in_inner["event_id"], in_inner["offset"]) == (SHIPPED.id, 2)
    assert (in_outer["event_id"], in_outer["offset"]) == (PAID.id, 1)
    assert after == {"event": "handler.done"}


def test_entering_none_clears_the_context() -> None:
    """Entering None (as the consumer does between events) makes lines carry no event fields."""
    outer = enter_work(FakeContext(event=PAID, offset=1))
    cleared = enter_work(None)
    try:
        line = processed()
    finally:
        exit_work(cleared)
        exit_work(outer)

    assert line == {"event": "handler.done"}


def test_inside_a_span_the_line_gets_its_trace_and_span_ids() -> None:
    """Within an active span, a line gets the span's trace_id (32 hex) and span_id (16 hex)."""
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("handle order.paid") as span:
            line = processed()
        after = processed()
    finally:
        provider.shutdown()

    span_context = span.get_span_context()
    assert line["trace_id"] == f"{span_context.trace_id:032x}"
    assert line["span_id"] == f"{span_context.span_id:016x}"
    assert len(line["trace_id"]) == 32 and int(line["trace_id"], 16) == span_context.trace_id
    assert len(line["span_id"]) == 16
    assert "trace_id" not in after and "span_id" not in after


def test_inside_a_span_and_work_the_line_gets_both() -> None:
    """Within a span and an entered event context, a line carries the event fields and the span ids."""
    provider = TracerProvider()
    token = enter_work(FakeContext(event=PAID, offset=7))
    try:
        with provider.get_tracer("test").start_as_current_span("handle order.paid") as span:
            line = processed()
    finally:
        exit_work(token)
        provider.shutdown()

    assert EVENT_FIELDS <= line.keys()
    assert line["span_id"] == f"{span.get_span_context().span_id:016x}"


async def test_each_asyncio_task_sees_its_own_work() -> None:
    """Two tasks handling events concurrently each log their own event, not the other's."""
    both_entered = asyncio.Barrier(2)

    async def handle(ctx: FakeContext) -> dict[str, Any]:
        token = enter_work(ctx)
        try:
            await both_entered.wait()  # the other task has entered its context by now
            return processed()
        finally:
            exit_work(token)

    paid, shipped = await asyncio.gather(
        handle(FakeContext(event=PAID, offset=10, partition=0)),
        handle(FakeContext(event=SHIPPED, offset=20, partition=1)),
    )

    assert (paid["event_id"], paid["offset"], paid["partition"]) == (PAID.id, 10, 0)
    assert (shipped["event_id"], shipped["offset"], shipped["partition"]) == (SHIPPED.id, 20, 1)
    assert processed() == {"event": "handler.done"}


# --- _OncePerWindow -----------------------------------------------------------------------


def test_repeated_template_passes_once_per_window() -> None:
    """The same logger's same message template with other arguments is let through only once per window."""
    once = _OncePerWindow()

    first = once.filter(record("aiokafka", "Unable connect to node with id %s: %s", 1, "refused"))
    repeat = once.filter(record("aiokafka", "Unable connect to node with id %s: %s", 2, "timed out"))

    assert (first, repeat) == (True, False)


def test_other_template_or_logger_passes() -> None:
    """A different template, or the same template from another logger, is not a repeat."""
    once = _OncePerWindow()
    once.filter(record("aiokafka", "Unable connect to node with id %s", 1))

    assert once.filter(record("aiokafka", "Heartbeat failed for group %s", "g")) is True
    assert once.filter(record("asyncpg", "Unable connect to node with id %s", 1)) is True


def test_zero_window_lets_everything_through() -> None:
    """With a window of 0 every record passes, repeats included."""
    once = _OncePerWindow(window_s=0)

    results = [once.filter(record("aiokafka", "Unable connect to node with id %s", n)) for n in range(3)]

    assert results == [True, True, True]


# --- configure_logging --------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the structlog configuration and the root logger that configure_logging replaces."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_render_structlog_and_stdlib_lines_as_json(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """After configure_logging(json_logs=True), structlog and stdlib lines both go to stderr as JSON."""
    configure_logging(json_logs=True)

    structlog.get_logger("eventq.consumer").info("consumer.started", topic="orders")
    logging.getLogger("aiokafka").error("x %s", 1)
    out, err = capfd.readouterr()

    ours, theirs = json_lines(err)
    assert out == ""
    assert ours["event"] == "consumer.started" and ours["level"] == "info" and ours["topic"] == "orders"
    assert "timestamp" in ours
    assert theirs["event"] == "x 1" and theirs["level"] == "error" and theirs["logger"] == "aiokafka"
    assert "timestamp" in theirs


def test_json_logs_carry_the_event_context_for_both_kinds_of_logger(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """Inside an entered event context, structlog and stdlib lines both carry the event's fields."""
    configure_logging(json_logs=True)
    token = enter_work(FakeContext(event=PAID, offset=1042))
    try:
        structlog.get_logger("eventq.handler").info("order.projected")
        logging.getLogger("asyncpg").warning("connection lost")
    finally:
        exit_work(token)

    lines = json_lines(capfd.readouterr().err)
    assert [line["event"] for line in lines] == ["order.projected", "connection lost"]
    for line in lines:
        assert (line["event_id"], line["offset"], line["consumer_group"]) == (PAID.id, 1042, "orders-projector")


def test_stdlib_repeats_are_shown_once(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    """A stdlib message repeated with other arguments (aiokafka's reconnects) is rendered only once."""
    configure_logging(json_logs=True)

    for node in (1, 2, 3):
        logging.getLogger("aiokafka").error("Unable connect to node with id %s", node)
    lines = json_lines(capfd.readouterr().err)

    assert [line["event"] for line in lines] == ["Unable connect to node with id 1"]


def test_structlog_lines_below_the_level_are_dropped(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    """With level WARNING, structlog info lines are dropped and warnings are kept."""
    configure_logging(json_logs=True, level="WARNING")

    log = structlog.get_logger("eventq.consumer")
    log.info("consumer.batch_committed")
    log.warning("consumer.rebalanced")
    lines = json_lines(capfd.readouterr().err)

    assert [(line["event"], line["level"]) for line in lines] == [("consumer.rebalanced", "warning")]


def test_stdlib_info_lines_are_dropped(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    """The root logger is set to WARNING, so the libraries' info chatter is not shown."""
    configure_logging(json_logs=True)

    logging.getLogger("aiokafka").info("Discovered coordinator %s", 1)
    lines = json_lines(capfd.readouterr().err)

    assert lines == []


# --- aiokafka's start-up noise -------------------------------------------------------------

# Exactly how aiokafka logs them (aiokafka/consumer/group_coordinator.py, aiokafka/cluster.py).
COORDINATOR = logging.getLogger("aiokafka.consumer.group_coordinator")
CLUSTER = logging.getLogger("aiokafka.cluster")


def test_coordinator_not_available_at_start_up_is_one_info_line(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """aiokafka's coordinator complaints while a fresh broker sets up the group show as one info line, not errors."""
    configure_logging(json_logs=True)

    for _ in range(3):
        COORDINATOR.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    COORDINATOR.warning("Marking the coordinator dead (node %s)for group %s.", 1, "demo-billing")
    COORDINATOR.error("Group Coordinator Request failed: %s", NotCoordinatorForGroupError())
    lines = json_lines(capfd.readouterr().err)

    assert len(lines) == 1
    (line,) = lines
    assert (line["event"], line["level"], line["logger"]) == (
        "kafka.coordinator_not_ready",
        "info",
        "aiokafka.consumer.group_coordinator",
    )
    assert line["error"] == "GroupCoordinatorNotAvailableError"
    assert line["detail"] == "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"


def test_other_coordinator_lookup_failures_stay_errors(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """A coordinator lookup that fails for another reason (a refused connection) is still an error line."""
    configure_logging(json_logs=True)

    COORDINATOR.error("Group Coordinator Request failed: %s", KafkaConnectionError("refused"))
    lines = json_lines(capfd.readouterr().err)

    assert [(line["event"], line["level"]) for line in lines] == [
        ("Group Coordinator Request failed: KafkaConnectionError: refused", "error")
    ]


def test_new_topic_not_yet_in_metadata_is_info(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    """aiokafka's "Topic ... not found in cluster metadata" at start-up is an info line naming the topic."""
    configure_logging(json_logs=True)

    CLUSTER.error("Topic %s not found in cluster metadata", "demo.orders")
    lines = json_lines(capfd.readouterr().err)

    assert [(line["event"], line["level"], line["topic"]) for line in lines] == [
        ("kafka.topic_not_in_metadata_yet", "info", "demo.orders")
    ]


def test_start_up_noise_is_dropped_above_info(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    """With level WARNING the demoted start-up lines are not shown at all."""
    configure_logging(json_logs=True, level="WARNING")

    COORDINATOR.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())

    assert json_lines(capfd.readouterr().err) == []


def test_after_the_start_up_grace_the_same_message_is_an_error_again() -> None:
    """Once the grace period is over, a coordinator that is still not available passes at error level."""
    now = [100.0]
    noise = _StartupNoise(logging.INFO, grace_s=60, clock=lambda: now[0])
    early = record(COORDINATOR.name, "Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    late = record(COORDINATOR.name, "Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())

    assert noise.filter(early) is True
    now[0] = 161.0
    assert noise.filter(late) is True

    assert (early.levelno, early.getMessage()) == (logging.INFO, "kafka.coordinator_not_ready")
    assert late.levelno == logging.ERROR
    assert late.getMessage() == "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"


def test_a_coordinator_marked_dead_at_start_up_is_info_with_its_group() -> None:
    """aiokafka's "Marking the coordinator dead" warning during start-up becomes kafka.coordinator_not_ready."""
    noise = _StartupNoise(logging.INFO)
    dead = record(COORDINATOR.name, "Marking the coordinator dead (node %s)for group %s.", 1, "demo-billing")
    dead.levelno, dead.levelname = logging.WARNING, "WARNING"

    assert noise.filter(dead) is True

    assert (dead.levelname, dead.getMessage(), dead.__dict__["group"]) == (
        "INFO",
        "kafka.coordinator_not_ready",
        "demo-billing",
    )
