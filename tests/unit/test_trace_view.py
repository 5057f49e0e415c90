"""`eventq trace`'s view: one event's journey picked from a span file written by the real SDK."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from eventq.errors import ConfigError
from eventq.telemetry.view import MARK, SpanRecord, journey, load_spans, render

EVENT = "0192f0a1-7c3e-7d2a-9b1e-3f5a8c2d4e61"
FOLLOW_UP = "0192f0a1-8d4f-7e3b-8c2f-4a6b9d3e5f72"
UNRELATED = "0192f0a1-9e5a-7f4c-9d3a-5b7cae4f6a83"
T0 = 1_795_912_739_000_000_000  # ns; 2026-11-29T00:38:59Z
MS = 1_000_000


@dataclass
class Recorded:
    """The JSON lines of a realistic journey and the SDK spans behind them, by role."""

    lines: list[str]
    spans: dict[str, ReadableSpan]

    def trace_id(self, role: str) -> str:
        return f"{self.spans[role].context.trace_id:032x}"

    def span_id(self, role: str) -> str:
        return f"{self.spans[role].context.span_id:016x}"

    def line(self, role: str) -> str:
        return str(self.spans[role].to_json(indent=None))


def record_journey() -> Recorded:
    """Event EVENT fails three times, is dead-lettered, replayed, then handled; UNRELATED shares its batch."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    roles: dict[str, Span] = {}

    def span(role: str, name: str, kind: SpanKind, start_ms: float, end_ms: float, *, parent: str | None = None,
             links: tuple[str, ...] = (), attributes: dict[str, str | int] | None = None) -> Span:
        ctx = trace.set_span_in_context(roles[parent]) if parent else Context()
        roles[role] = tracer.start_span(
            name, context=ctx, kind=kind, attributes=attributes, start_time=T0 + int(start_ms * MS),
            links=[Link(roles[link].get_span_context()) for link in links],
        )
        roles[role].end(end_time=T0 + int(end_ms * MS))
        return roles[role]

    kafka = {"messaging.system": "kafka", "messaging.destination.name": "orders"}
    consumed = {"messaging.destination.partition.id": "2", "messaging.consumer.group.name": "billing"}
    span("send", "send orders", SpanKind.PRODUCER, 0, 1.5, attributes={
        **kafka, "messaging.message.id": EVENT, "cloudevents.event_type": "order.placed.v1",
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 41})
    span("unrelated_send", "send orders", SpanKind.PRODUCER, 0.5, 1.0, attributes={
        **kafka, "messaging.message.id": UNRELATED, "messaging.kafka.offset": 42})
    span("process", "process orders", SpanKind.CONSUMER, 10, 40, links=("send", "unrelated_send"), attributes={
        **kafka, **consumed, "messaging.batch.message_count": 2})

    failed = tracer.start_span("handle order.placed.v1", context=trace.set_span_in_context(roles["send"]),
                               kind=SpanKind.CONSUMER, start_time=T0 + 11 * MS,
                               links=[Link(roles["process"].get_span_context())],
                               attributes={**kafka, **consumed, "messaging.message.id": EVENT,
                                           "messaging.kafka.offset": 41, "eventq.outcome": "dead_lettered",
                                           "eventq.attempts": 3})
    for attempt in (1, 2):
        failed.add_event("retry_scheduled", {"attempt": attempt, "delay_s": 0.5 * attempt, "error.type": "ValueError"},
                         timestamp=T0 + (11 + attempt) * MS)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        failed.record_exception(exc, timestamp=T0 + 20 * MS)
    failed.add_event("dead_lettered", {"reason": "attempts_exhausted", "error.type": "ValueError"},
                     timestamp=T0 + 21 * MS)
    failed.set_status(Status(StatusCode.ERROR, "boom"))
    roles["handle_failed"] = failed
    span("dlt_send", "send orders.dlt", SpanKind.PRODUCER, 21, 23.3, parent="handle_failed", attributes={
        "messaging.destination.name": "orders.dlt", "eventq.dead_letter.reason": "attempts_exhausted"})
    failed.end(end_time=T0 + 23_400_000)  # 12.4 ms
    span("unrelated_handle", "handle order.placed.v1", SpanKind.CONSUMER, 24, 26, parent="unrelated_send",
         links=("process",), attributes={**consumed, "messaging.message.id": UNRELATED, "eventq.outcome": "handled"})
    span("commit", "commit", SpanKind.CLIENT, 41, 43, links=("process",))

    span("replay", "replay orders.dlt", SpanKind.INTERNAL, 1000, 1100, attributes={
        "messaging.destination.name": "orders.dlt"})
    span("replay_send", "send orders", SpanKind.PRODUCER, 1001, 1002, parent="dlt_send", links=("replay",),
         attributes={**kafka, "messaging.message.id": EVENT, "messaging.kafka.offset": 57})
    span("process_again", "process orders", SpanKind.CONSUMER, 1010, 1030, links=("replay_send",), attributes={
        **kafka, **consumed, "messaging.batch.message_count": 1})
    span("handle_ok", "handle order.placed.v1", SpanKind.CONSUMER, 1011, 1020, parent="replay_send",
         links=("process_again",), attributes={**consumed, "messaging.message.id": EVENT,
                                               "messaging.kafka.offset": 57, "eventq.outcome": "handled",
                                               "eventq.attempts": 1})
    span("follow_up", "send invoices", SpanKind.PRODUCER, 1015, 1016, parent="handle_ok", attributes={
        "messaging.destination.name": "invoices", "messaging.message.id": FOLLOW_UP})
    provider.shutdown()

    by_role = {name: finished for finished in exporter.get_finished_spans()
               for name, live in roles.items() if live.get_span_context() == finished.context}
    return Recorded(lines=[by_role[name].to_json(indent=None) for name in roles], spans=by_role)


@pytest.fixture
def recorded() -> Recorded:
    return record_journey()


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "spans.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def names_and_ids(spans: tuple[SpanRecord, ...]) -> list[tuple[str, str]]:
    return [(span.name, span.span_id) for span in spans]


def test_journey_is_the_events_trace_plus_spans_one_link_away(tmp_path: Path, recorded: Recorded) -> None:
    """The journey holds the event's whole trace and the process/replay spans one link away, not commit."""
    spans = load_spans(write(tmp_path, recorded.lines)).spans

    found = journey(spans, EVENT)

    assert [t.trace_id for t in found.traces] == [recorded.trace_id("send")]
    assert names_and_ids(found.traces[0].spans) == [
        (recorded.spans[role].name, recorded.span_id(role))
        for role in ("send", "handle_failed", "dlt_send", "replay_send", "handle_ok", "follow_up")
    ]
    assert names_and_ids(found.linked) == [
        ("process orders", recorded.span_id("process")),
        ("replay orders.dlt", recorded.span_id("replay")),
        ("process orders", recorded.span_id("process_again")),
    ]


def test_unrelated_event_in_the_same_batch_is_left_out(tmp_path: Path, recorded: Recorded) -> None:
    """An event that only shares the batch (a process span) with the asked one does not enter its journey."""
    found = journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT)

    every = [*found.linked, *(span for t in found.traces for span in t.spans)]
    assert recorded.trace_id("unrelated_send") not in {span.trace_id for span in every}
    assert UNRELATED not in render(found)


def test_no_matching_span_gives_an_empty_journey(tmp_path: Path, recorded: Recorded) -> None:
    """An id no span carries gives an empty journey and a one-line render saying so."""
    found = journey(load_spans(write(tmp_path, recorded.lines)).spans, "no-such-event")

    assert found.is_empty and found.linked == ()
    assert render(found) == "no span in the file has messaging.message.id no-such-event"


def test_traces_are_ordered_by_their_earliest_span(tmp_path: Path) -> None:
    """An event published twice (two traces) lists the trace that started first first, whatever the file order."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for start_ms in (5, 0):  # the later send is written to the file first
        sent = tracer.start_span("send orders", context=Context(), kind=SpanKind.PRODUCER,
                                 attributes={"messaging.message.id": EVENT}, start_time=T0 + start_ms * MS)
        sent.end(end_time=T0 + (start_ms + 1) * MS)
    provider.shutdown()
    later, earlier = exporter.get_finished_spans()

    found = journey(load_spans(write(tmp_path, [later.to_json(indent=None), earlier.to_json(indent=None)])).spans,
                    EVENT)

    assert [t.trace_id for t in found.traces] == [f"{s.context.trace_id:032x}" for s in (earlier, later)]
    assert "\n\ntrace " in render(found) and render(found).count("\ntrace ") == 2


def test_render_draws_children_below_and_indented_under_their_parent(tmp_path: Path, recorded: Recorded) -> None:
    """Each span's line comes after its parent's, indented one level deeper, children in start order."""
    text = render(journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT))

    span_lines = [line for line in text.splitlines() if "─ " in line]
    assert [line.split("─ ", 1)[1].split("  ")[0] for line in span_lines] == [
        f"{MARK} send orders", f"{MARK} handle order.placed.v1", "send orders.dlt", f"{MARK} send orders",
        f"{MARK} handle order.placed.v1", "send invoices",
    ]
    depths = [line.index("─") // 3 for line in span_lines]
    assert depths == [0, 1, 2, 3, 4, 5]
    assert text.splitlines()[:3] == [
        f"event {EVENT}  ({MARK} = spans of this event)", "", f"trace {recorded.trace_id('send')}",
    ]


def test_render_marks_the_asked_events_spans_only(tmp_path: Path, recorded: Recorded) -> None:
    """Spans carrying the asked id get the marker; a follow-up event shows its id's last 12 characters."""
    text = render(journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT))

    marked = [line for line in text.splitlines() if MARK in line][1:]  # the first line explains the marker
    assert len(marked) == 4
    follow_up = next(line for line in text.splitlines() if "send invoices" in line)
    assert MARK not in follow_up and f"event=…{FOLLOW_UP[-12:]}" in follow_up
    assert EVENT not in "\n".join(text.splitlines()[1:])  # the asked id is said once, at the top


def test_render_shows_attributes_events_links_and_errors(tmp_path: Path, recorded: Recorded) -> None:
    """The failed handle's line has its key attributes and error; its retries, exception and link follow it."""
    lines = render(journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT)).splitlines()

    at = next(i for i, line in enumerate(lines) if "handle order.placed.v1" in line)
    assert lines[at].endswith(
        f"{MARK} handle order.placed.v1  CONSUMER  12.4 ms  topic=orders offset=41 partition=2 group=billing "
        "outcome=dead_lettered attempts=3  ERROR: boom"
    )
    assert [line.strip(" │") for line in lines[at + 1: at + 6]] == [
        "· retry_scheduled attempt=1 delay_s=0.5 error.type=ValueError",
        "· retry_scheduled attempt=2 delay_s=1.0 error.type=ValueError",
        "· exception ValueError: boom",
        "· dead_lettered reason=attempts_exhausted error.type=ValueError",
        f"↔ linked: process orders (trace {recorded.trace_id('process')[:8]}…)",
    ]
    assert "send orders.dlt  PRODUCER  2.3 ms  topic=orders.dlt reason=attempts_exhausted" in lines[at + 6]
    assert "Traceback" not in "\n".join(lines)
    assert "\x1b[" not in "\n".join(lines)


def test_render_lists_linked_spans_after_the_traces(tmp_path: Path, recorded: Recorded) -> None:
    """The linked spans section shows each one-hop span on one line with its trace."""
    lines = render(journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT)).splitlines()

    section = lines[lines.index("linked spans") + 1:]
    assert section == [
        "   process orders  CONSUMER  30.0 ms  topic=orders partition=2 group=billing batch=2  "
        f"(trace {recorded.trace_id('process')[:8]}…)",
        f"   replay orders.dlt  INTERNAL  100.0 ms  topic=orders.dlt  (trace {recorded.trace_id('replay')[:8]}…)",
        "   process orders  CONSUMER  20.0 ms  topic=orders partition=2 group=billing batch=1  "
        f"(trace {recorded.trace_id('process_again')[:8]}…)",
    ]


def test_span_whose_parent_is_missing_is_drawn_as_a_root(tmp_path: Path, recorded: Recorded) -> None:
    """Without the send span in the file, the handle span becomes a root saying its parent is not in the file."""
    lines = [recorded.line(role) for role in ("handle_failed", "dlt_send")]

    text = render(journey(load_spans(write(tmp_path, lines)).spans, EVENT))

    tree = [line for line in text.splitlines() if "─ " in line]
    assert tree[0].startswith(f"└─ {MARK} handle order.placed.v1") and tree[0].endswith("(parent not in file)")
    assert tree[1].startswith("   └─ send orders.dlt")
    assert f"↔ linked: span {recorded.span_id('process')} (trace " in text and "not in file)" in text


def test_color_only_paints_errors(tmp_path: Path, recorded: Recorded) -> None:
    """With color on, ERROR parts are red and nothing else is coloured."""
    text = render(journey(load_spans(write(tmp_path, recorded.lines)).spans, EVENT), color=True)

    assert text.count("\x1b[31mERROR: boom\x1b[0m") == 1
    assert text.count("\x1b[") == 2


def test_lines_that_are_not_spans_are_skipped_and_counted(tmp_path: Path, recorded: Recorded) -> None:
    """Bad JSON, JSON without name/context and mistyped ids are counted as skipped; blank lines are ignored."""
    broken = [
        "not json at all",
        '{"name": "send orders"}',
        '{"context": {"trace_id": "0x1", "span_id": "0x2"}}',
        recorded.line("send").replace(recorded.trace_id("send"), "zz-not-hex"),
        "[1, 2]",
        "",
        "   ",
    ]
    path = write(tmp_path, [recorded.line("send"), *broken, recorded.line("handle_ok")])
    path.write_bytes(path.read_bytes() + b"\xff\xfe not utf-8\n")

    loaded = load_spans(path)

    assert [span.span_id for span in loaded.spans] == [recorded.span_id("send"), recorded.span_id("handle_ok")]
    assert loaded.skipped == 6
    assert loaded.path == str(path)


def test_record_keeps_what_the_sdk_wrote(tmp_path: Path, recorded: Recorded) -> None:
    """A span read back has short kind, bare hex ids, UTC times, status, events and links as written."""
    (span,) = load_spans(write(tmp_path, [recorded.line("handle_failed")])).spans

    assert (span.kind, span.trace_id, span.span_id, span.parent_id) == (
        "CONSUMER", recorded.trace_id("send"), recorded.span_id("handle_failed"), recorded.span_id("send"))
    assert span.start.isoformat() == "2026-11-29T00:38:59.011000+00:00"
    assert round(span.duration_ms, 1) == 12.4
    assert (span.status_code, span.status_description) == ("ERROR", "boom")
    assert [event.name for event in span.events] == ["retry_scheduled", "retry_scheduled", "exception",
                                                     "dead_lettered"]
    assert span.links == ((recorded.trace_id("process"), recorded.span_id("process")),)
    assert span.message_id == EVENT


def test_missing_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    """A file that does not exist is a ConfigError naming the path and how to record spans."""
    missing = tmp_path / "nowhere" / "spans.jsonl"

    with pytest.raises(ConfigError, match="No such file.*EVENTQ_TRACE_FILE") as caught:
        load_spans(missing)

    assert str(missing) in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_unreadable_path_raises_config_error_naming_it(tmp_path: Path) -> None:
    """A directory given as the span file is a ConfigError naming it, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read span file") as caught:
        load_spans(tmp_path)

    assert str(tmp_path) in str(caught.value)


# --- the command ------------------------------------------------------------------------


def test_trace_command_prints_the_journey(tmp_path: Path, recorded: Recorded) -> None:
    """`eventq trace ID --file F` prints the event's trees and exits 0; skipped lines are reported on stderr."""
    from click.testing import CliRunner

    from eventq.cli import main

    path = write(tmp_path, [*recorded.lines, "not json"])
    result = CliRunner().invoke(main, ["trace", EVENT, "--file", str(path)])

    assert result.exit_code == 0, result.output
    assert f"event {EVENT}" in result.stdout
    assert "handle order.placed.v1" in result.stdout
    assert "1 lines of" in result.stderr


def test_trace_command_fails_clearly_without_the_event_or_the_file(tmp_path: Path, recorded: Recorded) -> None:
    """An id no span names, or a missing file, exits 1 with one line saying what to do."""
    from click.testing import CliRunner

    from eventq.cli import main

    path = write(tmp_path, recorded.lines)
    unknown = CliRunner().invoke(main, ["trace", "0192f0a1-0000-7000-8000-000000000000", "--file", str(path)])
    missing = CliRunner().invoke(main, ["trace", EVENT, "--file", str(tmp_path / "nope.jsonl")])

    assert unknown.exit_code == 1
    assert "no span in" in unknown.stderr and "EVENTQ_TRACE_FILE" in unknown.stderr
    assert missing.exit_code == 1
    assert "nope.jsonl" in missing.stderr
