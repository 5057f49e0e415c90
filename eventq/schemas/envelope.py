"""The event envelope: CloudEvents 1.0, Kafka protocol binding, binary content mode.

A record carries one event:

=================  ===========================================================
record key         the partition key (UTF-8), or none
record value       the payload, JSON (``content-type: application/json``)
record timestamp   the event time, in milliseconds
``ce_specversion`` ``1.0``
``ce_id``          the event id, a time-ordered UUID (version 7)
``ce_source``      who published it (URI-reference)
``ce_type``        the versioned event type, e.g. ``order.created.v1``
``ce_time``        RFC 3339 time
``ce_subject``     optional subject
``ce_correlationid`` extension: the id shared by every event of one flow
``ce_causationid`` extension: the id of the event whose handling published this one
``traceparent``    W3C trace context (Distributed Tracing extension), optional
``tracestate``     W3C trace state, optional
=================  ===========================================================

:func:`encode` and :func:`decode` are inverses for every valid :class:`Event`.
:func:`decode` never lets an exception from deep inside escape: every way a record
can be malformed raises :class:`~eventq.errors.InvalidEvent` with the reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from time import time_ns
from typing import Any

import orjson
import uuid_utils

from eventq.errors import EventTooLarge, InvalidEvent
from eventq.schemas.correlation import current_cause

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
DEFAULT_MAX_EVENT_BYTES = 1_000_000

H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_SOURCE = "ce_source"
H_TYPE = "ce_type"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_CORRELATION = "ce_correlationid"
H_CAUSATION = "ce_causationid"
H_CONTENT_TYPE = "content-type"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"

_SPECVERSION_BYTES = SPEC_VERSION.encode()
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()
_SPECVERSION_HEADER = (H_SPECVERSION, _SPECVERSION_BYTES)
_CONTENT_TYPE_HEADER = (H_CONTENT_TYPE, _CONTENT_TYPE_BYTES)
_REQUIRED = (H_SPECVERSION, H_ID, H_SOURCE, H_TYPE, H_TIME)
_FIXED_HEADER_BYTES = sum(
    len(name) for name in (H_SPECVERSION, H_ID, H_SOURCE, H_TYPE, H_TIME, H_CONTENT_TYPE, H_CORRELATION)
) + len(_SPECVERSION_BYTES) + len(_CONTENT_TYPE_BYTES)


def new_event_id() -> str:
    """A new time-ordered (version 7) UUID in canonical text form: ids sort by creation time."""
    return str(uuid_utils.uuid7())


def _now() -> datetime:
    return datetime.fromtimestamp(time_ns() // 1_000_000 / 1000, UTC)


@lru_cache(maxsize=8)
def _utc_second(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _rfc3339(time: datetime, timestamp_ms: int) -> str:
    # isoformat() costs ~3 µs on a small VM; events of one batch share their
    # second, so the cached prefix makes this the cheapest part of encode().
    if time.tzinfo is UTC:
        return f"{_utc_second(timestamp_ms // 1000)}.{timestamp_ms % 1000:03d}Z"
    return time.isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One immutable event.

    ``id`` and ``time`` default to a new UUIDv7 and now; times are kept to the millisecond, the
    precision of ``ce_time`` and of the Kafka record timestamp. Created while a handler runs
    (see :mod:`eventq.schemas.correlation`), an event inherits the handled event's
    correlation id and takes its id as causation id; otherwise its correlation id is
    its own id. Explicit values always win.
    """

    type: str
    source: str
    data: Any
    key: str | None = None
    subject: str | None = None
    id: str = field(default_factory=new_event_id)
    time: datetime = field(default_factory=_now)
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    def __post_init__(self) -> None:
        if not self.type or not isinstance(self.type, str):
            raise InvalidEvent("event type must be a non-empty string, e.g. 'order.created.v1'")
        if not self.source or not isinstance(self.source, str):
            raise InvalidEvent("event source must be a non-empty string, e.g. 'orders-service'")
        if self.time.tzinfo is None:
            raise InvalidEvent("event time must be timezone-aware, e.g. datetime.now(UTC)")
        if self.time.microsecond % 1000:
            # The wire carries milliseconds (ce_time and the record timestamp);
            # truncating here keeps decode(encode(event)) == event.
            object.__setattr__(self, "time", self.time.replace(microsecond=self.time.microsecond // 1000 * 1000))
        if self.correlation_id is None:
            cause = current_cause()
            if cause is None:
                object.__setattr__(self, "correlation_id", self.id)
            else:
                object.__setattr__(self, "correlation_id", cause.correlation_id)
                if self.causation_id is None:
                    object.__setattr__(self, "causation_id", cause.event_id)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """The Kafka record of one event, ready for a producer."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


# What encode_parts() returns: key, value, timestamp_ms, then the header values
# (ce_id, ce_source, ce_type, ce_time, ce_correlationid) and the optional headers.
# A plain tuple of bytes and ints, because the garbage collector stops tracking
# such tuples: publish_many keeps one per event alive while it sends, and with a
# tracked object per event, collections took a third of the publish time.
RecordParts = tuple[
    bytes | None, bytes, int, bytes, bytes, bytes, bytes, bytes, tuple[tuple[str, bytes], ...] | None
]


def encode(
    event: Event,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    trace_headers: Sequence[tuple[str, bytes]] = (),
) -> EncodedEvent:
    """Encode an event as a Kafka record.

    ``trace_headers`` (W3C ``traceparent``/``tracestate``) are used when the event
    carries none of its own. Raises :class:`InvalidEvent` when the payload is not
    JSON-serialisable and :class:`EventTooLarge` over ``max_event_bytes``.
    """
    parts = encode_parts(event, max_event_bytes=max_event_bytes, trace_headers=trace_headers)
    return EncodedEvent(key=parts[0], value=parts[1], headers=record_headers(parts), timestamp_ms=parts[2])


def encode_parts(
    event: Event,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    trace_headers: Sequence[tuple[str, bytes]] = (),
) -> RecordParts:
    """:func:`encode` without building the header list (see :data:`RecordParts`)."""
    try:
        value = orjson.dumps(event.data)
    except TypeError as exc:
        raise InvalidEvent(f"payload of {event.type!r} is not JSON-serialisable: {exc}") from exc
    event_id = event.id.encode()
    source = event.source.encode()
    event_type = event.type.encode()
    timestamp_ms = round(event.time.timestamp() * 1000)
    time = _rfc3339(event.time, timestamp_ms).encode()
    correlation = event.correlation_id.encode() if event.correlation_id else event_id
    key = event.key.encode() if event.key is not None else None
    size = (
        _FIXED_HEADER_BYTES
        + len(value)
        + (len(key) if key is not None else 0)
        + len(event_id)
        + len(source)
        + len(event_type)
        + len(time)
        + len(correlation)
    )
    extra: tuple[tuple[str, bytes], ...] | None = None
    if event.causation_id or event.subject or event.traceparent or trace_headers:
        optional: list[tuple[str, bytes]] = []
        if event.causation_id:
            optional.append((H_CAUSATION, event.causation_id.encode()))
        if event.subject:
            optional.append((H_SUBJECT, event.subject.encode()))
        if event.traceparent:
            optional.append((H_TRACEPARENT, event.traceparent.encode()))
            if event.tracestate:
                optional.append((H_TRACESTATE, event.tracestate.encode()))
        else:
            optional.extend(trace_headers)
        size += sum(len(name) + len(raw) for name, raw in optional)
        extra = tuple(optional)
    if size > max_event_bytes:
        raise EventTooLarge(size, max_event_bytes)
    return (key, value, timestamp_ms, event_id, source, event_type, time, correlation, extra)


def record_headers(parts: RecordParts) -> list[tuple[str, bytes]]:
    """The header list of an encoded event, envelope first."""
    headers = [
        _SPECVERSION_HEADER,
        (H_ID, parts[3]),
        (H_SOURCE, parts[4]),
        (H_TYPE, parts[5]),
        (H_TIME, parts[6]),
        _CONTENT_TYPE_HEADER,
        (H_CORRELATION, parts[7]),
    ]
    extra = parts[8]
    if extra:
        headers.extend(extra)
    return headers


def _text(headers: dict[str, bytes], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"header {name!r} is not valid UTF-8") from exc


# The canonical lower-case form every eventq producer writes; other spellings go
# through uuid.UUID (3 µs, a fifth of decode's time on a small VM).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_new_event = object.__new__
_set = object.__setattr__


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> Event:
    """Decode a Kafka record into an :class:`Event`.

    Raises :class:`InvalidEvent` (never anything else) when a required header is
    missing, the spec version is not 1.0, the id is not a UUID, the time is not
    RFC 3339, the content type is not JSON, the value is missing, not JSON or over
    ``max_event_bytes``, or the key or a header is not UTF-8. Payload schemas are
    checked separately (:meth:`eventq.schemas.registry.SchemaRegistry.validate`).
    """
    if value is None:
        raise InvalidEvent("record has no value (a tombstone), so it carries no event")
    size = len(value) + (len(key) if key is not None else 0)
    if size > max_event_bytes:
        raise InvalidEvent(f"record is {size} bytes, over max_event_bytes={max_event_bytes}")
    # First occurrence wins: a header appended later cannot override the envelope.
    hdrs: dict[str, bytes] = dict(reversed(headers if isinstance(headers, list) else list(headers)))
    get = hdrs.get
    raw_id, raw_time, raw_type, raw_source = get(H_ID), get(H_TIME), get(H_TYPE), get(H_SOURCE)
    if raw_id is None or raw_time is None or raw_type is None or raw_source is None or (
        get(H_SPECVERSION) != _SPECVERSION_BYTES
    ):
        missing = [name for name in _REQUIRED if name not in hdrs]
        if missing:
            raise InvalidEvent(f"missing CloudEvents header(s): {', '.join(missing)}")
        spec = _text(hdrs, H_SPECVERSION)
        raise InvalidEvent(f"unsupported ce_specversion {spec!r}; eventq reads CloudEvents 1.0")
    content_type = get(H_CONTENT_TYPE)
    if content_type is not None and content_type != _CONTENT_TYPE_BYTES:
        text = _text(hdrs, H_CONTENT_TYPE) or ""
        if text.split(";")[0].strip() != CONTENT_TYPE:
            raise InvalidEvent(f"unsupported content-type {text!r}; expected {CONTENT_TYPE}")
    try:
        event_id = raw_id.decode()
        time_text = raw_time.decode()
        event_type = raw_type.decode()
        source = raw_source.decode()
        raw = get(H_CORRELATION)
        correlation_id = raw.decode() if raw else event_id
        raw = get(H_CAUSATION)
        causation_id = raw.decode() if raw else None
        raw = get(H_SUBJECT)
        subject = raw.decode() if raw is not None else None
        raw = get(H_TRACEPARENT)
        traceparent = raw.decode() if raw is not None else None
        raw = get(H_TRACESTATE)
        tracestate = raw.decode() if raw is not None else None
    except (UnicodeDecodeError, AttributeError) as exc:
        for name in (H_ID, H_TIME, H_TYPE, H_SOURCE, H_CORRELATION, H_CAUSATION, H_SUBJECT, H_TRACEPARENT,
                     H_TRACESTATE):
            raw = hdrs.get(name)
            if raw is not None and not isinstance(raw, bytes):
                raise InvalidEvent(f"header {name!r} has no bytes value") from None
            _text(hdrs, name)
        raise InvalidEvent("a header is not valid UTF-8") from exc
    if not _CANONICAL_UUID.fullmatch(event_id):
        try:
            event_id = str(uuid.UUID(event_id))
        except ValueError as exc:
            raise InvalidEvent(f"ce_id {event_id!r} is not a UUID") from exc
        if correlation_id == raw_id.decode():
            correlation_id = event_id
    try:
        time = datetime.fromisoformat(time_text)
    except ValueError as exc:
        raise InvalidEvent(f"ce_time {time_text!r} is not an RFC 3339 timestamp") from exc
    if time.tzinfo is None:
        raise InvalidEvent(f"ce_time {time_text!r} has no UTC offset")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"payload is not valid JSON: {exc}") from exc
    try:
        partition_key = key.decode() if key is not None else None
    except UnicodeDecodeError as exc:
        raise InvalidEvent("record key is not valid UTF-8") from exc
    if not event_type:
        raise InvalidEvent("event type must be a non-empty string, e.g. 'order.created.v1'")
    if not source:
        raise InvalidEvent("event source must be a non-empty string, e.g. 'orders-service'")
    if time.microsecond % 1000:
        time = time.replace(microsecond=time.microsecond // 1000 * 1000)
    # Every field is checked above, so skip Event.__init__'s checks and its
    # correlation lookup (a decoded event keeps the ids it was sent with).
    event: Event = _new_event(Event)
    _set(event, "type", event_type)
    _set(event, "source", source)
    _set(event, "data", data)
    _set(event, "key", partition_key)
    _set(event, "subject", subject)
    _set(event, "id", event_id)
    _set(event, "time", time)
    _set(event, "correlation_id", correlation_id)
    _set(event, "causation_id", causation_id)
    _set(event, "traceparent", traceparent)
    _set(event, "tracestate", tracestate)
    return event
