"""Reading dead letters: eventq's own headers, and Spring's and Karafka's.

:func:`parse` turns one dead-letter record into a :class:`Letter` whatever wrote it,
and never raises: a record it cannot read becomes a letter of dialect ``unreadable``
(its position known, :attr:`Letter.unreadable` saying why) that the tools report and skip.

- **eventq**: ``eventq-dlt-*`` (see :mod:`eventq.consumers.deadletter`);
- **Spring for Apache Kafka**: ``kafka_dlt-original-*`` / ``kafka_dlt-exception-*``
  (DeadLetterPublishingRecoverer) or ``kafka_original-*`` / ``kafka_exception-*``
  (retry topics); partition, offset and timestamp may be big-endian binary integers;
- **Karafka**: ``source_*`` (2.5+) or ``original_*`` (before 2.5); Karafka records no
  error class.

Header names may hold lone surrogates (``\\udc80``-``\\udcff``): :func:`eventq.kafka.consumer`
decodes names that are not UTF-8 with ``surrogateescape``. :func:`eventq.kafkarecords.printable` renders
them with U+FFFD for printing and JSON.

:func:`scan` reads a dead-letter topic from its start (or a given position) up to the
end it had when the scan began, so a scan always ends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventq import kafka as kafka_boundary
from eventq import wire as w
from eventq.config import KafkaSettings
from eventq.errors import ConsumerError
from eventq.kafka import partition_counts, unreachable_for_reading
from eventq.kafkarecords import printable
from eventq.telemetry.logs import bounded

# header name -> Letter field, per dialect (the names are declared in eventq.wire)
_SPRING = {
    w.SPRING_DLT_ORIGINAL_TOPIC: "source_topic",
    w.SPRING_DLT_ORIGINAL_PARTITION: "source_partition",
    w.SPRING_DLT_ORIGINAL_OFFSET: "source_offset",
    w.SPRING_DLT_ORIGINAL_TIMESTAMP: "source_timestamp",
    w.SPRING_DLT_ORIGINAL_CONSUMER_GROUP: "group",
    w.SPRING_DLT_EXCEPTION_FQCN: "error_type",
    w.SPRING_DLT_EXCEPTION_CAUSE_FQCN: "cause_type",
    w.SPRING_DLT_EXCEPTION_MESSAGE: "error_message",
    w.SPRING_DLT_EXCEPTION_STACKTRACE: "stacktrace",
}
_SPRING_RETRY = {
    w.SPRING_ORIGINAL_TOPIC: "source_topic",
    w.SPRING_ORIGINAL_PARTITION: "source_partition",
    w.SPRING_ORIGINAL_OFFSET: "source_offset",
    w.SPRING_ORIGINAL_TIMESTAMP: "source_timestamp",
    w.SPRING_ORIGINAL_CONSUMER_GROUP: "group",  # not what Spring writes; read in case another writer does
    # Spring's KafkaHeaders.ORIGINAL_CONSUMER_GROUP is "kafka_dlt-original-consumer-group" too,
    # so it wins over the name above (a later entry overwrites an earlier one).
    w.SPRING_DLT_ORIGINAL_CONSUMER_GROUP: "group",
    w.SPRING_EXCEPTION_FQCN: "error_type",
    w.SPRING_EXCEPTION_CAUSE_FQCN: "cause_type",
    w.SPRING_EXCEPTION_MESSAGE: "error_message",
    w.SPRING_EXCEPTION_STACKTRACE: "stacktrace",
    w.SPRING_RETRY_ATTEMPTS: "attempts",
}
_KARAFKA = {
    w.KARAFKA_SOURCE_TOPIC: "source_topic",
    w.KARAFKA_SOURCE_PARTITION: "source_partition",
    w.KARAFKA_SOURCE_OFFSET: "source_offset",
    w.KARAFKA_SOURCE_CONSUMER_GROUP: "group",
    w.KARAFKA_SOURCE_ATTEMPTS: "attempts",
}
_KARAFKA_OLD = {
    w.KARAFKA_ORIGINAL_TOPIC: "source_topic",
    w.KARAFKA_ORIGINAL_PARTITION: "source_partition",
    w.KARAFKA_ORIGINAL_OFFSET: "source_offset",
    w.KARAFKA_ORIGINAL_CONSUMER_GROUP: "group",
    w.KARAFKA_ORIGINAL_ATTEMPTS: "attempts",
}
_EVENTQ = {
    w.DLT_TOPIC: "source_topic",
    w.DLT_PARTITION: "source_partition",
    w.DLT_OFFSET: "source_offset",
    w.DLT_TIMESTAMP: "source_timestamp",
    w.DLT_GROUP: "group",
    w.DLT_HANDLER: "handler",
    w.DLT_REASON: "reason",
    w.DLT_ATTEMPTS: "attempts",
    w.DLT_FIRST_FAILURE: "first_failure",
    w.DLT_LAST_FAILURE: "last_failure",
    w.DLT_ERROR_TYPE: "error_type",
    w.DLT_ERROR_MESSAGE: "error_message",
    w.DLT_STACKTRACE: "stacktrace",
}
# Checked in this order; the first whose topic header is present wins.
DIALECTS: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("eventq", _EVENTQ),
    ("spring", _SPRING),
    ("spring-retry", _SPRING_RETRY),
    ("karafka", _KARAFKA),
    ("karafka-legacy", _KARAFKA_OLD),
)
_INTEGER_FIELDS = {"source_partition", "source_offset", "source_timestamp", "attempts"}
# Headers a replay drops, per dialect: exact names, and prefixes (Spring writes more
# headers than eventq reads, e.g. kafka_dlt-original-timestamp-type).
_DIALECT_HEADERS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "eventq": (frozenset(), ()),
    "spring": (frozenset(), (w.SPRING_DLT_PREFIX,)),
    "spring-retry": (
        frozenset({w.SPRING_DLT_ORIGINAL_CONSUMER_GROUP}),
        (w.SPRING_ORIGINAL_PREFIX, w.SPRING_EXCEPTION_PREFIX, w.SPRING_RETRY_TOPIC_PREFIX),
    ),
    "karafka": (frozenset({*_KARAFKA, w.KARAFKA_SOURCE_TRACE_ID}), ()),
    "karafka-legacy": (frozenset({*_KARAFKA_OLD, w.KARAFKA_ORIGINAL_TRACE_ID}), ()),
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
UNREADABLE = "unreadable"  # the dialect of a record parse could not read
LOG_FIELD_CHARS = 200  # at most this much of any letter's field goes into a log line


def clip(text: str | None, limit: int = LOG_FIELD_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, for log lines and reasons (see :func:`eventq.telemetry.logs.bounded`)."""
    return bounded(text, limit)


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: where it sits, where it came from, why it failed, and the record itself."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    dialect: str = "unknown"
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_timestamp: int | None = None
    group: str | None = None
    handler: str | None = None
    reason: str | None = None
    attempts: int | None = None
    first_failure: str | None = None
    last_failure: str | None = None
    error_type: str | None = None
    cause_type: str | None = None  # the wrapped exception's class, when the writer records it (Spring)
    error_message: str | None = None
    stacktrace: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    correlation_id: str | None = None
    replay_count: int = 0
    replays: tuple[str, ...] = field(default=())  # dead-letter positions it was replayed from before
    unreadable: str | None = None  # why parse could not read the record (dialect "unreadable")

    @property
    def time_known(self) -> bool:
        """Whether the record's timestamp is a time Python can represent (years 1 to 9999)."""
        return self._time() is not None

    def _time(self) -> datetime | None:
        try:
            return _EPOCH + timedelta(milliseconds=self.timestamp_ms)
        except (OverflowError, TypeError, ValueError):
            return None

    @property
    def time(self) -> datetime:
        """When it was dead-lettered (the dead-letter record's timestamp).

        A timestamp beyond what datetime holds is clamped to ``datetime.min``/``max`` (UTC),
        so comparisons keep its order; :attr:`time_known` tells, :attr:`time_text` shows the raw ms.
        """
        moment = self._time()
        if moment is not None:
            return moment
        return _EARLIEST if self.timestamp_ms < 0 else _LATEST

    @property
    def time_text(self) -> str:
        """The time in ISO 8601, or the raw milliseconds when they are out of range."""
        moment = self._time()
        if moment is None:
            return f"timestamp {self.timestamp_ms} ms (out of range)"
        return moment.isoformat(timespec="milliseconds")

    @property
    def position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "replace") if self.key is not None else None

    @property
    def undecodable_names(self) -> int:
        """How many header names are not UTF-8 (carry lone surrogates)."""
        return sum(1 for n, _ in self.headers if printable(n) != n)

    def problems(self) -> list[str]:
        """What the tools cannot read or show faithfully in this letter (empty: nothing)."""
        found = []
        if self.unreadable is not None:
            found.append(f"unreadable: {self.unreadable}")
        if not self.time_known:
            found.append(f"timestamp {self.timestamp_ms} ms is out of range")
        if self.undecodable_names:
            found.append(f"{self.undecodable_names} header name(s) not UTF-8")
        return found

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers without this letter's dialect's dead-letter headers, nor eventq's
        dead-letter, retry and replay headers (other headers keep their order)."""
        names, prefixes = _DIALECT_HEADERS.get(self.dialect, (frozenset(), ()))
        prefixes = (*prefixes, w.DLT_PREFIX, w.RETRY_PREFIX, w.REPLAY_PREFIX)
        return [(n, v) for n, v in self.headers if n not in names and not n.startswith(prefixes)]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (bytes as UTF-8 text where they decode as UTF-8, else ``base64:…``;
        header names that are not UTF-8 with U+FFFD). Absent fields are null."""
        return {
            "position": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "dead_lettered_at": self.time.isoformat(timespec="milliseconds") if self.time_known else None,
            "timestamp_ms": self.timestamp_ms,
            "dialect": self.dialect,
            "unreadable": self.unreadable,
            "source": {
                "topic": self.source_topic, "partition": self.source_partition, "offset": self.source_offset,
                "timestamp": self.source_timestamp, "consumer_group": self.group,
            },
            "event": {"id": self.event_id, "type": self.event_type, "correlation_id": self.correlation_id,
                      "key": self.key_text},
            "failure": {
                "reason": self.reason, "handler": self.handler, "attempts": self.attempts,
                "first": self.first_failure, "last": self.last_failure, "error_type": self.error_type,
                "cause_type": self.cause_type, "message": self.error_message, "stacktrace": self.stacktrace,
            },
            "replay": {"count": self.replay_count, "from": list(self.replays)},
            "payload": _payload(self.value),
            "headers": {printable(n): _text(v) for n, v in self.headers},
        }


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        import base64

        return "base64:" + base64.b64encode(raw).decode()


def _payload(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _text(raw)


def _integer(raw: bytes) -> int | None:
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        pass
    if len(raw) in (4, 8):  # Spring writes partition (int) and offset/timestamp (long) in binary
        return int.from_bytes(raw, "big", signed=True)
    return None


def parse(record: Any) -> Letter:
    """A :class:`Letter` from a consumed dead-letter record (any dialect, or none).

    Never raises: if anything about the record cannot be read, the letter has dialect
    ``unreadable``, :attr:`Letter.unreadable` says why, and it keeps what could be salvaged.
    """
    try:
        return _parse(record)
    except Exception as exc:  # noqa: BLE001 - one hostile record must not stop a scan
        return _unreadable(record, exc)


def _parse(record: Any) -> Letter:
    headers = tuple((n, v if v is not None else b"") for n, v in (record.headers or ()))
    first: dict[str, bytes] = {}
    for name, value in headers:
        first.setdefault(name, value)
    fields: dict[str, Any] = {}
    dialect = "unknown"
    for name, mapping in DIALECTS:
        topic_header = next(h for h, f in mapping.items() if f == "source_topic")
        if topic_header in first:
            dialect = name
            for header, attribute in mapping.items():
                if header in first:
                    raw = first[header]
                    fields[attribute] = _integer(raw) if attribute in _INTEGER_FIELDS else _text(raw)
            break
    replays = tuple(_text(v) or "" for n, v in headers if n == w.REPLAY_FROM)
    count = first.get(w.REPLAY_COUNT)
    letter = Letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        headers=headers,
        dialect=dialect,
        event_id=_text(first.get(w.H_ID)),
        event_type=_text(first.get(w.H_TYPE)),
        correlation_id=_text(first.get(w.H_CORRELATION)),
        replay_count=(_integer(count) or 0) if count is not None else 0,
        replays=replays,
        **fields,
    )
    _check(letter)
    return letter


def _check(letter: Letter) -> None:
    # What the tools do with every letter later (print, JSON-encode, compare, replay) must not
    # fail there, far from the record: check the types here, where the position is known.
    for name, value in ("topic", letter.topic), ("partition", letter.partition), ("offset", letter.offset), (
        "timestamp", letter.timestamp_ms
    ):
        if not isinstance(value, str if name == "topic" else int) or isinstance(value, bool):
            raise TypeError(f"the record's {name} is {type(value).__name__}")
    for name, raw in ("key", letter.key), ("value", letter.value):
        if raw is not None and not isinstance(raw, bytes):
            raise TypeError(f"the record's {name} is {type(raw).__name__}, not bytes")
    for header, raw in letter.headers:
        if not isinstance(header, str) or not isinstance(raw, bytes):
            raise TypeError(f"a header is ({type(header).__name__}, {type(raw).__name__}), not (str, bytes)")


def _unreadable(record: Any, exc: Exception) -> Letter:
    def attribute(name: str, kind: type, default: Any) -> Any:
        value = getattr(record, name, default)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    return Letter(
        topic=attribute("topic", str, "?"),
        partition=attribute("partition", int, -1),
        offset=attribute("offset", int, -1),
        timestamp_ms=attribute("timestamp", int, 0),
        key=attribute("key", bytes, None),
        value=attribute("value", bytes, None),
        headers=(),
        dialect=UNREADABLE,
        unreadable=clip(f"{type(exc).__name__}: {exc}"),
    )


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    """The topic's partitions; ConsumerError if it does not exist."""
    count = (await partition_counts(kafka, [topic])).get(topic)
    if count is None:
        raise ConsumerError(f"topic {topic!r} does not exist; list dead-letter topics with 'eventq dlq list'")
    return [TopicPartition(topic, p) for p in range(count)]


def admin_client(kafka: KafkaSettings) -> contextlib.AbstractAsyncContextManager[AIOKafkaAdminClient]:
    """A started admin client (:func:`eventq.kafka.admin`); ConsumerError (retriable) if no broker answers."""
    return kafka_boundary.admin(kafka, unreachable=lambda exc: unreachable_for_reading(kafka, exc))


async def scan(
    kafka: KafkaSettings,
    topic: str,
    *,
    start: Mapping[int, int] | int | None = None,
) -> AsyncIterator[Letter]:
    """Every dead letter of ``topic`` from ``start`` (partition → offset, or one offset for
    every partition; default the beginning) up to the end each partition had when the
    scan began. Within a partition letters come in offset order."""
    # eventq's consumer reads header names that are not UTF-8 (aiokafka's own raises in getmany).
    consumer = kafka_boundary.consumer(kafka, enable_auto_commit=False, isolation_level="read_committed", group_id=None)
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise unreachable_for_reading(kafka, exc) from exc
    try:
        tps = await partitions_of(kafka, topic)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        consumer.assign(tps)
        remaining: dict[TopicPartition, int] = {}
        for tp in tps:
            wanted = start if isinstance(start, int) else (start or {}).get(tp.partition, begins[tp])
            first = max(begins[tp], wanted)
            if first < ends[tp]:
                consumer.seek(tp, first)
                remaining[tp] = ends[tp]
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=500)
            if not batch:
                # Nothing more below the end we saw (e.g. a transaction marker at the end).
                positions = {tp: await consumer.position(tp) for tp in remaining}
                for tp, position in positions.items():
                    if position >= remaining[tp]:
                        del remaining[tp]
                continue
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= remaining.get(tp, -1):
                        continue
                    yield parse(record)
                if tp in remaining and (records[-1].offset + 1 >= remaining[tp]):
                    del remaining[tp]
    finally:
        await consumer.stop()
