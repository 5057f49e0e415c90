"""The event envelope: CloudEvents 1.0 over the Kafka protocol binding.

eventq writes **binary content mode**, one event per record (header names are declared
in :mod:`eventq.wire`):

=====================  =======================================================
record key             the partition key (UTF-8), or none
record value           the payload, JSON (``content-type: application/json``)
record timestamp       the event time, in milliseconds
``ce_specversion``     ``1.0``
``ce_id``              the event id; eventq writes a time-ordered UUID (version 7)
``ce_source``          who published it (URI-reference)
``ce_type``            the event type; eventq's own are versioned, ``order.created.v1``
``ce_time``            RFC 3339 time
``ce_subject``         optional subject
``ce_correlationid``   extension: the id shared by every event of one flow
``ce_causationid``     extension: the id of the event whose handling published this one
``traceparent``        W3C trace context (Distributed Tracing extension), optional
``tracestate``         W3C trace state, optional
=====================  =======================================================

:func:`decode` reads every CloudEvents 1.0 record whose data is JSON, from any producer:

* **Binary mode** (as above). Only ``ce_specversion`` (``1.0``), ``ce_id``, ``ce_source``
  and ``ce_type`` are required, each non-empty. ``id`` is an opaque string, kept exactly
  as sent (not a UUID necessarily, never rewritten). ``content-type`` is optional
  (absent means JSON); it must be a JSON media type — ``application/json``,
  ``text/json`` or any ``+json`` type, case-insensitive, with an optional
  ``charset=utf-8``.
* **Structured mode**: ``content-type: application/cloudevents+json`` (parameters
  allowed). The value is the JSON object of the event: ``specversion``, ``id``,
  ``source``, ``type``, optional ``time``, ``subject``, ``datacontenttype``, the
  extensions ``correlationid``, ``causationid``, ``traceparent``, ``tracestate``, and
  ``data``. ``ce_`` headers are ignored, as the binding says; the record key is still
  the partition key. ``data_base64`` is accepted only with a JSON ``datacontenttype``
  (it is base64-decoded, then parsed as JSON): eventq payloads are JSON, so binary
  data, or a ``datacontenttype`` that is not JSON, is :class:`InvalidEvent`.
* ``time`` is optional. Without it the event's time is the record timestamp
  (``timestamp_ms``), or the time of decoding when the record has none (-1/None).
  RFC 3339 times are accepted with lower-case ``t``/``z`` and with sub-millisecond
  digits (dropped, like every eventq time).
* Missing ``ce_correlationid``/``correlationid`` means the event's own id; other
  attributes (``dataschema``, unknown extensions, ``partitionkey``) are ignored.
* A record with no ``ce_`` header at all whose value is a JSON object with a
  ``specversion`` is read as structured mode too, whatever its ``content-type``: the
  SDK's older Kafka binding (``cloudevents.v1.kafka``, 1.x ``cloudevents.kafka``)
  writes structured mode that way (the data's content type, or none).
* Batched mode (``application/cloudevents-batch+json``), other spec versions (0.3),
  and any missing required attribute are :class:`InvalidEvent` with the reason.

:func:`encode` and :func:`decode` are inverses for every valid :class:`Event`.
:func:`decode` never lets an exception from deep inside escape: every way a record
can be malformed raises :class:`~eventq.errors.InvalidEvent` with the reason, and
what the reason quotes from the record is clipped to about 100 characters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from time import time_ns
from typing import Any, NoReturn

import orjson
import uuid_utils

from eventq.errors import EventTooLarge, InvalidEvent
from eventq.schemas.correlation import current_cause
from eventq.wire import (
    H_CAUSATION,
    H_CONTENT_TYPE,
    H_CORRELATION,
    H_ID,
    H_SOURCE,
    H_SPECVERSION,
    H_SUBJECT,
    H_TIME,
    H_TRACEPARENT,
    H_TRACESTATE,
    H_TYPE,
)

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_MAX_EVENT_BYTES = 1_000_000

_SPECVERSION_BYTES = SPEC_VERSION.encode()
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()
_SPECVERSION_HEADER = (H_SPECVERSION, _SPECVERSION_BYTES)
_CONTENT_TYPE_HEADER = (H_CONTENT_TYPE, _CONTENT_TYPE_BYTES)
_REQUIRED = (H_SPECVERSION, H_ID, H_SOURCE, H_TYPE)
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

    ``id`` and ``time`` default to a new UUIDv7 and now; ``id`` may be any non-empty
    string (CloudEvents ids are opaque; other producers' ids are kept as sent). Times are kept to the millisecond, the
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
        if not isinstance(self.id, str) or not self.id:
            raise InvalidEvent("event id must be a non-empty string; leave it out for a new UUIDv7")
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
        return _encode_parts(event, max_event_bytes, trace_headers)
    except UnicodeEncodeError as exc:  # a lone surrogate in an attribute: no UTF-8 text can carry it
        raise InvalidEvent(
            f"an attribute of {event.type[:100]!r} is not valid UTF-8 text ({exc.reason} at position {exc.start})"
        ) from None


def _encode_parts(event: Event, max_event_bytes: int, trace_headers: Sequence[tuple[str, bytes]]) -> RecordParts:
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



_CLIP = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})
_STRUCTURED_REQUIRED = ("specversion", "id", "source", "type")
_STRUCTURED_OPTIONAL = ("time", "subject", "datacontenttype", "correlationid", "causationid", "traceparent",
                        "tracestate")
_fromisoformat = datetime.fromisoformat
_new_event = object.__new__
_set = object.__setattr__


def _clip(value: object) -> str:
    """``repr(value)``, cut to about 100 characters: reasons quote records, which can be huge."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: _CLIP * 4]).decode(errors="replace")
    text = repr(value)
    return text if len(text) <= _CLIP else f"{text[: _CLIP - 5]}...{text[-1]}"


def _text(headers: Mapping[str, Any], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if not isinstance(raw, bytes | bytearray):
        raise InvalidEvent(f"header {name!r} has no bytes value")
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"header {name!r} is not valid UTF-8") from exc


def _is_json(media: str) -> bool:
    return media in ("application/json", "text/json") or (media.endswith("+json") and "/" in media)


@lru_cache(maxsize=64)
def _is_structured(content_type: bytes) -> bool:
    """True for structured mode, False for binary mode with JSON data; InvalidEvent otherwise."""
    try:
        text = content_type.decode()
    except UnicodeDecodeError as exc:
        raise InvalidEvent("header 'content-type' is not valid UTF-8") from exc
    media, *params = text.split(";")
    media = media.strip().lower()
    if media.startswith("application/cloudevents") and media != STRUCTURED_CONTENT_TYPE:
        raise InvalidEvent(
            f"content-type {_clip(text)} is not supported; eventq reads binary mode and "
            f"structured mode ({STRUCTURED_CONTENT_TYPE}), one event per record"
        )
    if media != STRUCTURED_CONTENT_TYPE and not _is_json(media):
        raise InvalidEvent(
            f"unsupported content-type {_clip(text)}; eventq payloads are JSON "
            "(application/json, text/json or a +json media type)"
        )
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _JSON_CHARSETS:
            raise InvalidEvent(f"content-type {_clip(text)} is not UTF-8; JSON is read as UTF-8")
    return media == STRUCTURED_CONTENT_TYPE


def _parse_time(text: str, attribute: str) -> datetime:
    try:
        time = _fromisoformat(text)
    except ValueError:
        try:
            # RFC 3339 allows a lower-case 't' and 'z'; Python 3.11 reads only upper case.
            time = _fromisoformat(text.upper())
        except ValueError as exc:
            raise InvalidEvent(f"{attribute} {_clip(text)} is not an RFC 3339 timestamp") from exc
    if time.tzinfo is None:
        raise InvalidEvent(f"{attribute} {_clip(text)} has no UTC offset")
    return time


def _record_time(timestamp_ms: int | None) -> datetime:
    # CloudEvents' time is optional; the record timestamp is when the producer (or the
    # broker, for LogAppendTime topics) saw the event. Records without one (-1) get now.
    if timestamp_ms is None or timestamp_ms < 0:
        return _now()
    try:
        return _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError as exc:
        raise InvalidEvent(f"record timestamp {_clip(timestamp_ms)} is out of range") from exc


def _envelope_error(hdrs: Mapping[str, Any]) -> NoReturn:
    missing = [name for name in _REQUIRED if not hdrs.get(name)]
    if missing:
        raise InvalidEvent(
            f"missing or empty {', '.join(missing)}; CloudEvents 1.0 requires "
            "ce_specversion, ce_id, ce_source and ce_type"
        )
    raise InvalidEvent(f"unsupported ce_specversion {_clip(hdrs[H_SPECVERSION])}; eventq reads CloudEvents 1.0")


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    timestamp_ms: int | None = None,
) -> Event:
    """Decode a Kafka record (binary or structured mode) into an :class:`Event`.

    ``timestamp_ms`` is the record timestamp: the event's time when the event has no
    ``time`` attribute (the time of decoding if it is None or negative too). Raises
    :class:`InvalidEvent` (never anything else) when a required attribute is missing
    or empty, the spec version is not 1.0, the time is not RFC 3339, the content type
    is not JSON, the value is missing, not JSON or over ``max_event_bytes``, or the key
    or a header is not UTF-8 (the module docstring lists what is accepted). Payload
    schemas are checked separately (:meth:`eventq.schemas.registry.SchemaRegistry.validate`).
    """
    try:
        if value is None:
            raise InvalidEvent("record has no value (a tombstone), so it carries no event")
        size = len(value) + (len(key) if key is not None else 0)
        if size > max_event_bytes:
            raise InvalidEvent(f"record is {size} bytes, over max_event_bytes={max_event_bytes}")
        # First occurrence wins: a header appended later cannot override the envelope.
        hdrs: dict[str, Any] = dict(reversed(headers if isinstance(headers, list) else list(headers)))
        get = hdrs.get
        content_type = get(H_CONTENT_TYPE)
        if content_type is not None and content_type != _CONTENT_TYPE_BYTES and _is_structured(content_type):
            return _decode_structured(key, value, timestamp_ms)
        raw_id, raw_time, raw_type, raw_source = get(H_ID), get(H_TIME), get(H_TYPE), get(H_SOURCE)
        if not raw_id or not raw_type or not raw_source or get(H_SPECVERSION) != _SPECVERSION_BYTES:
            if raw_id is None and raw_type is None and raw_source is None and get(H_SPECVERSION) is None:
                event = _decode_headerless(key, value, timestamp_ms)
                if event is not None:
                    return event
            _envelope_error(hdrs)
        try:
            event_id = raw_id.decode()
            event_type = raw_type.decode()
            source = raw_source.decode()
            time_text = raw_time.decode() if raw_time is not None else None
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
                _text(hdrs, name)
            raise InvalidEvent("a header is not valid UTF-8") from exc
        if time_text is None:
            time = _record_time(timestamp_ms)
        else:
            try:
                time = _fromisoformat(time_text)
            except ValueError:
                time = _parse_time(time_text, H_TIME)
            if time.tzinfo is None:
                raise InvalidEvent(f"ce_time {_clip(time_text)} has no UTC offset")
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"payload is not valid JSON: {_clip(str(exc))}") from exc
        return _event(key, event_type, source, data, subject, event_id, time, correlation_id, causation_id,
                      traceparent, tracestate)
    except InvalidEvent:
        raise
    except Exception as exc:
        # The checks above cover what a Kafka client can hand over; this is for the
        # rest (headers that are not pairs, values of odd types), so that one odd
        # record is dead-lettered instead of stopping the consumer.
        raise InvalidEvent(f"malformed record: {type(exc).__name__}: {_clip(str(exc))}") from exc


def _decode_headerless(key: bytes | None, value: bytes, timestamp_ms: int | None) -> Event | None:
    # The SDK's older Kafka binding (cloudevents 1.x ``cloudevents.kafka``, now
    # ``cloudevents.v1.kafka``) writes structured mode with the data's content type,
    # or none, as content-type. A record without any ce_ header cannot be binary mode,
    # so a JSON object with a specversion is read as structured mode.
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or "specversion" not in doc:
        return None
    return _from_document(key, doc, timestamp_ms)


def _decode_structured(key: bytes | None, value: bytes, timestamp_ms: int | None) -> Event:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"structured-mode value is not valid JSON: {_clip(str(exc))}") from exc
    if not isinstance(doc, dict):
        raise InvalidEvent(f"structured-mode value must be a JSON object holding the event, not {type(doc).__name__}")
    return _from_document(key, doc, timestamp_ms)


def _from_document(key: bytes | None, doc: dict[str, Any], timestamp_ms: int | None) -> Event:
    missing = [name for name in _STRUCTURED_REQUIRED if doc.get(name) in (None, "")]
    if missing:
        raise InvalidEvent(
            f"missing or empty {', '.join(missing)}; CloudEvents 1.0 requires specversion, id, source and type"
        )
    for name in _STRUCTURED_REQUIRED + _STRUCTURED_OPTIONAL:
        attribute = doc.get(name)
        if attribute is not None and not isinstance(attribute, str):
            raise InvalidEvent(f"attribute {name!r} must be a string, not {_clip(attribute)}")
    if doc["specversion"] != SPEC_VERSION:
        raise InvalidEvent(f"unsupported specversion {_clip(doc['specversion'])}; eventq reads CloudEvents 1.0")
    datacontenttype = doc.get("datacontenttype")
    is_json = True
    if datacontenttype is not None:
        media = datacontenttype.split(";")[0].strip().lower()
        is_json = _is_json(media)
        if not is_json:
            raise InvalidEvent(
                f"unsupported datacontenttype {_clip(datacontenttype)}; eventq payloads are JSON "
                "(application/json, text/json or a +json media type)"
            )
    if "data_base64" in doc:
        if "data" in doc:
            raise InvalidEvent("structured-mode event has both data and data_base64; CloudEvents allows one")
        if datacontenttype is None:
            raise InvalidEvent(
                "structured-mode event carries data_base64 (binary data) without a JSON datacontenttype; "
                "eventq payloads are JSON"
            )
        encoded = doc["data_base64"]
        if not isinstance(encoded, str):
            raise InvalidEvent(f"data_base64 must be a base64 string, not {_clip(encoded)}")
        try:
            data = orjson.loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidEvent(f"data_base64 is not base64 of JSON ({datacontenttype}): {_clip(str(exc))}") from exc
    else:
        data = doc.get("data")
    time_text = doc.get("time")
    time = _record_time(timestamp_ms) if time_text is None else _parse_time(time_text, "time")
    event_id = doc["id"]
    return _event(key, doc["type"], doc["source"], data, doc.get("subject"), event_id, time,
                  doc.get("correlationid") or event_id, doc.get("causationid") or None, doc.get("traceparent"),
                  doc.get("tracestate"))


def _event(
    key: bytes | None,
    event_type: str,
    source: str,
    data: Any,
    subject: str | None,
    event_id: str,
    time: datetime,
    correlation_id: str,
    causation_id: str | None,
    traceparent: str | None,
    tracestate: str | None,
) -> Event:
    try:
        partition_key = key.decode() if key is not None else None
    except UnicodeDecodeError as exc:
        raise InvalidEvent("record key is not valid UTF-8") from exc
    if time.microsecond % 1000:
        time = time.replace(microsecond=time.microsecond // 1000 * 1000)
    # Every field is checked by the caller, so skip Event.__init__'s checks and its
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
