"""One event's journey, read from a local span file and drawn as a text tree.

This is what ``eventq trace EVENT_ID --file spans.jsonl`` shows: :func:`load_spans` reads
a JSON-lines file where each line is one ``ReadableSpan.to_json(indent=None)`` of the
OpenTelemetry SDK, :func:`journey` picks the spans of one event and :func:`render` draws
them. All three are pure: nothing is printed, nothing global is configured.

Limits: it reads one local file, whole, into memory, and asks no tracing backend.
Spans recorded elsewhere (another process's file, a collector) are missing: their
children show "(parent not in file)" and links to them show bare ids. Links are
followed one hop only. Lines that are not spans are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventq.errors import ConfigError
from eventq.telemetry import tracing as tr

MARK = "◆"  # in front of every span whose messaging.message.id is the asked event

_FIELDS = (  # the attributes shown on a span's line, in this order, with their labels
    (tr.MESSAGE_ID, "event"), (tr.DESTINATION, "topic"), (tr.OFFSET, "offset"), (tr.PARTITION, "partition"),
    (tr.GROUP, "group"), (tr.BATCH_COUNT, "batch"), (tr.OUTCOME, "outcome"), (tr.ATTEMPTS, "attempts"),
    (tr.DEAD_LETTER_REASON, "reason"),
)
_MAX_TEXT = 120  # longer descriptions and attribute values are cut, so one span stays one line
_RED, _RESET = "\x1b[31m", "\x1b[0m"

SpanKey = tuple[str, str]  # (trace_id, span_id)


@dataclass(frozen=True)
class SpanEvent:
    """One event recorded on a span: ``retry_scheduled``, ``exception``, ``dead_lettered``..."""

    name: str
    timestamp: datetime
    attributes: dict[str, object]


@dataclass(frozen=True)
class SpanRecord:
    """One finished span as read back from the file; ids are lowercase hex without ``0x``."""

    name: str
    kind: str  # "PRODUCER", "CONSUMER", "INTERNAL", "CLIENT" or "SERVER"
    trace_id: str
    span_id: str
    parent_id: str | None
    start: datetime
    end: datetime
    status_code: str  # "UNSET", "OK" or "ERROR"
    status_description: str
    attributes: dict[str, object]
    events: tuple[SpanEvent, ...]
    links: tuple[SpanKey, ...]

    @property
    def key(self) -> SpanKey:
        return (self.trace_id, self.span_id)

    @property
    def message_id(self) -> str | None:
        value = self.attributes.get(tr.MESSAGE_ID)
        return None if value is None else str(value)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start).total_seconds() * 1000


@dataclass(frozen=True)
class SpanFile:
    """The spans of one file, in file order, and how many non-blank lines were not spans."""

    path: str
    spans: tuple[SpanRecord, ...]
    skipped: int


@dataclass(frozen=True)
class Trace:
    """The spans of one trace that are in the file, ordered by start time."""

    trace_id: str
    spans: tuple[SpanRecord, ...]


@dataclass(frozen=True)
class Journey:
    """The traces an event appears in (earliest first) and the spans one link away from them."""

    event_id: str
    traces: tuple[Trace, ...]
    linked: tuple[SpanRecord, ...]

    @property
    def is_empty(self) -> bool:
        return not self.traces


def load_spans(path: str | os.PathLike[str]) -> SpanFile:
    """Every span of a JSON-lines file; blank lines are ignored, other non-spans counted in ``skipped``.

    Raises :class:`ConfigError` naming the file when it is missing or cannot be read.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as lines:
            parsed = [_parse(line) for line in lines if line.strip()]
    except OSError as exc:
        raise ConfigError(
            f"cannot read span file {name}: {exc.strerror or exc}; record spans by running eventq with "
            f"EVENTQ_TRACE_FILE={name} (eventq demo writes one), then pass that file with --file"
        ) from exc
    spans = tuple(span for span in parsed if span is not None)
    return SpanFile(path=name, spans=spans, skipped=len(parsed) - len(spans))


def journey(spans: Iterable[SpanRecord], event_id: str) -> Journey:
    """The spans of one event's journey; empty when no span has ``messaging.message.id == event_id``.

    Main traces are every trace holding a span of the event (follow-up events published
    by its handlers are in them too). Linked spans are the spans of other traces that
    link into a main trace, or that a main-trace span links to: one hop, no further.
    A span that appears twice in the file is taken once.
    """
    by_key: dict[SpanKey, SpanRecord] = {}
    for span in spans:
        by_key.setdefault(span.key, span)
    main = {span.trace_id for span in by_key.values() if span.message_id == event_id}
    linked: set[SpanKey] = set()
    for span in by_key.values():
        if span.trace_id in main:
            linked.update(link for link in span.links if link[0] not in main and link in by_key)
        elif any(trace_id in main for trace_id, _ in span.links):
            linked.add(span.key)
    traces = [
        Trace(trace_id, tuple(sorted((s for s in by_key.values() if s.trace_id == trace_id), key=_by_start)))
        for trace_id in main
    ]
    traces.sort(key=lambda trace: _by_start(trace.spans[0]))
    return Journey(event_id, tuple(traces), tuple(sorted((by_key[key] for key in linked), key=_by_start)))


def render(journey: Journey, *, color: bool = False) -> str:
    """The journey as text: one tree per trace, then the linked spans; ANSI red for errors if ``color``."""
    if journey.is_empty:
        return f"no span in the file has messaging.message.id {journey.event_id}"
    known = {span.key: span for trace in journey.traces for span in trace.spans}
    known.update((span.key, span) for span in journey.linked)
    lines = [f"event {journey.event_id}  ({MARK} = spans of this event)"]
    for trace in journey.traces:
        lines += ["", f"trace {trace.trace_id}"]
        lines += _tree(trace.spans, journey.event_id, known, color)
    if journey.linked:
        lines += ["", "linked spans"]
        for span in journey.linked:
            lines.append(f"   {_line(span, journey.event_id, color)}  (trace {span.trace_id[:8]}…)")
    return "\n".join(lines)


def _tree(spans: tuple[SpanRecord, ...], event_id: str, known: dict[SpanKey, SpanRecord], color: bool) -> list[str]:
    in_file = {span.span_id for span in spans}
    roots: list[SpanRecord] = []
    children: dict[str, list[SpanRecord]] = {}
    for span in spans:  # already in start order, so children lists are too
        if span.parent_id is not None and span.parent_id in in_file:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    lines: list[str] = []

    def draw(span: SpanRecord, prefix: str, last: bool) -> None:
        orphan = "  (parent not in file)" if span.parent_id is not None and span.parent_id not in in_file else ""
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_line(span, event_id, color)}{orphan}")
        below = prefix + ("   " if last else "│  ")
        kids = children.get(span.span_id, [])
        lines.extend(below + ("│  " if kids else "   ") + detail for detail in _details(span, known))
        for i, kid in enumerate(kids):
            draw(kid, below, i == len(kids) - 1)

    for i, root in enumerate(roots):
        draw(root, "", i == len(roots) - 1)
    return lines


def _line(span: SpanRecord, event_id: str, color: bool) -> str:
    mark = f"{MARK} " if span.message_id == event_id else ""
    parts = [f"{mark}{span.name}", span.kind, f"{span.duration_ms:.1f} ms"]
    fields = []
    for attribute, label in _FIELDS:
        value = span.attributes.get(attribute)
        if value is None or (attribute == tr.MESSAGE_ID and str(value) == event_id):
            continue
        text = _text(value)
        if attribute == tr.MESSAGE_ID and len(text) > 12:
            text = "…" + text[-12:]
        fields.append(f"{label}={text}")
    if fields:
        parts.append(" ".join(fields))
    if span.status_code == "ERROR":
        error = f"ERROR: {_text(span.status_description)}" if span.status_description else "ERROR"
        parts.append(f"{_RED}{error}{_RESET}" if color else error)
    return "  ".join(parts)


def _details(span: SpanRecord, known: dict[SpanKey, SpanRecord]) -> list[str]:
    details = []
    for event in span.events:
        if event.name == "exception":
            kind = _text(event.attributes.get("exception.type", "?"))
            details.append(f"· exception {kind}: {_text(event.attributes.get('exception.message', ''))}")
        else:
            details.append(" ".join([f"· {event.name}", *(f"{k}={_text(v)}" for k, v in event.attributes.items())]))
    for trace_id, span_id in span.links:
        target = known.get((trace_id, span_id))
        if target is not None:
            details.append(f"↔ linked: {target.name} (trace {trace_id[:8]}…)")
        else:
            details.append(f"↔ linked: span {span_id} (trace {trace_id[:8]}…, not in file)")
    return details


def _parse(line: bytes) -> SpanRecord | None:
    """The span a line holds, or None when it is not one (bad JSON, missing or mistyped fields)."""
    try:
        raw = json.loads(line)
        context, status = raw["context"], raw.get("status") or {}
        return SpanRecord(
            name=_str(raw["name"]),
            kind=str(raw.get("kind") or "SpanKind.INTERNAL").rpartition(".")[2],
            trace_id=_hex_id(context["trace_id"]),
            span_id=_hex_id(context["span_id"]),
            parent_id=None if raw.get("parent_id") is None else _hex_id(raw["parent_id"]),
            start=_time(raw["start_time"]),
            end=_time(raw["end_time"]),
            status_code=str(status.get("status_code") or "UNSET"),
            status_description=str(status.get("description") or ""),
            attributes=_attributes(raw.get("attributes")),
            events=tuple(
                SpanEvent(_str(e["name"]), _time(e["timestamp"]), _attributes(e.get("attributes")))
                for e in raw.get("events") or []
            ),
            links=tuple(
                (_hex_id(link["context"]["trace_id"]), _hex_id(link["context"]["span_id"]))
                for link in raw.get("links") or []
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        return None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _hex_id(value: Any) -> str:
    text = _str(value).lower().removeprefix("0x")
    int(text, 16)  # ValueError if it is not hex
    return text


def _time(value: Any) -> datetime:
    moment = datetime.fromisoformat(_str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _attributes(value: Any) -> dict[str, object]:
    if not isinstance(value, dict | None):
        raise TypeError(f"expected an object, got {value!r}")
    return {str(k): v for k, v in (value or {}).items()}


def _text(value: object) -> str:
    text = " ".join(str(value).split())  # one line, whatever the value holds
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _by_start(span: SpanRecord) -> tuple[datetime, str]:
    return (span.start, span.span_id)
