"""Dead letters: the record as it arrived, plus where it came from and why it failed.

A dead-letter record keeps the original key, value and headers byte for byte (any
``eventq-dlt-*`` headers of an earlier failure are replaced), and adds (the names are
declared in :mod:`eventq.wire`):

==========================  ==================================================
``eventq-dlt-topic``        source topic
``eventq-dlt-partition``    source partition
``eventq-dlt-offset``       source offset
``eventq-dlt-timestamp``    source record timestamp (ms since the epoch)
``eventq-dlt-group``        consumer group
``eventq-dlt-handler``      handler (module.qualname), empty if none ran
``eventq-dlt-reason``       ``exhausted`` | ``rejected`` | ``invalid`` | ``unknown-type`` |
                            ``undecodable`` (the Kafka client could not read it whole)
``eventq-dlt-attempts``     handler attempts made (0 if none ran)
``eventq-dlt-first-failure`` RFC 3339 time of the first failure
``eventq-dlt-last-failure`` RFC 3339 time of the last failure
``eventq-dlt-error-type``   exception class, module-qualified
``eventq-dlt-error-message`` its message (at most 2,000 bytes)
``eventq-dlt-stacktrace``   its traceback, innermost part (at most 8,000 bytes)
``eventq-dlt-omitted``      only on a letter that did not fit its topic: what was left
                            out (``stacktrace``, ``error-message``, ``value``, ``headers``,
                            ``key``, in that order), and ``eventq-dlt-original-bytes``
                            the size of the record it would have been
``eventq-dlt-null-value``   ``true`` when the original had neither key nor value (aiokafka
                            cannot write that; the letter's value is empty)
``eventq-dlt-traceparent``  W3C context of the dead letter's ``send`` span (only
                            with tracing on): ``eventq dlq replay`` continues the
                            event's trace from it
==========================  ==================================================

A letter always fits: the daemon creates dead-letter topics with the source topic's
``max.message.bytes`` plus :data:`HEADROOM_BYTES`, and a letter that is still too large
for its topic (an older, smaller dead-letter topic; a broker limit) is sent again
without what does not fit (:func:`fitted`), never retried as it is. The source record
keeps the whole original for as long as the source topic retains it.

The record goes to the dead-letter topic with its original key (so dead letters of
one key stay in order) and the time of dead-lettering as its timestamp. See
docs/adr/0007-dead-letter-records.md.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka import errors as ke

from eventq.config import KafkaSettings
from eventq.consumers.retrytopics import origin_of
from eventq.consumers.settings import ConsumerSettings
from eventq.errors import EventqError, MessageTooLarge, PublishTimeout
from eventq.kafka import stop_producer, translate
from eventq.kafkarecords import printable
from eventq.wire import (
    DLT_ATTEMPTS,
    DLT_ERROR_MESSAGE,
    DLT_ERROR_TYPE,
    DLT_FIRST_FAILURE,
    DLT_GROUP,
    DLT_HANDLER,
    DLT_LAST_FAILURE,
    DLT_NULL_VALUE,
    DLT_OFFSET,
    DLT_OMITTED,
    DLT_ORIGINAL_BYTES,
    DLT_PARTITION,
    DLT_PREFIX,
    DLT_REASON,
    DLT_STACKTRACE,
    DLT_TIMESTAMP,
    DLT_TOPIC,
)

Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers

MAX_MESSAGE_BYTES = 2_000
MAX_STACK_BYTES = 8_000

REASON_EXHAUSTED = "exhausted"
REASON_REJECTED = "rejected"
REASON_INVALID = "invalid"
REASON_UNKNOWN_TYPE = "unknown-type"
REASON_UNDECODABLE = "undecodable"

# Room for eventq's own headers on top of a source record (the error message and the
# stack trace are bounded above; topic, group and handler names are short).
HEADROOM_BYTES = 64 * 1024
_RECORD_OVERHEAD = 128  # a v2 batch with one record: batch header, varints, attributes
_HEADER_OVERHEAD = 10
_SHORT_MESSAGE_BYTES = 200


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an event is being dead-lettered."""

    reason: str
    error_type: str
    message: str
    stacktrace: str = ""
    handler: str = ""
    attempts: int = 0
    first_failure: datetime | None = None
    last_failure: datetime | None = None

    @classmethod
    def from_exception(
        cls,
        reason: str,
        exc: BaseException,
        *,
        handler: str = "",
        attempts: int = 0,
        first_failure: datetime | None = None,
        last_failure: datetime | None = None,
    ) -> Failure:
        """A failure described by ``exc`` (type, message, bounded traceback)."""
        kind = type(exc)
        stack = "".join(traceback.format_exception(exc)) if exc.__traceback__ is not None else ""
        now = datetime.now(UTC)
        return cls(
            reason=reason,
            error_type=f"{kind.__module__}.{kind.__qualname__}",
            message=str(exc),
            stacktrace=stack,
            handler=handler,
            attempts=attempts,
            first_failure=first_failure or now,
            last_failure=last_failure or now,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record to dead-letter: the original bytes and the failure."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    group: str
    failure: Failure


def _clip(text: str, limit: int, *, tail: bool = False) -> bytes:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    cut = raw[-limit:] if tail else raw[:limit]
    return cut.decode("utf-8", "ignore").encode()


def _time(value: datetime | None) -> bytes:
    return (value or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers (earlier ``eventq-dlt-*`` ones dropped) plus this failure's.

    A header name that was not UTF-8 on the wire is written with U+FFFD in place of its
    undecodable bytes (Kafka clients can only write text names).
    """
    f = letter.failure
    headers = [(printable(name), value) for name, value in letter.headers if not name.startswith(DLT_PREFIX)]
    headers += [
        (DLT_TOPIC, letter.topic.encode()),
        (DLT_PARTITION, str(letter.partition).encode()),
        (DLT_OFFSET, str(letter.offset).encode()),
        (DLT_TIMESTAMP, str(letter.timestamp).encode()),
        (DLT_GROUP, letter.group.encode()),
        (DLT_HANDLER, f.handler.encode()),
        (DLT_REASON, f.reason.encode()),
        (DLT_ATTEMPTS, str(f.attempts).encode()),
        (DLT_FIRST_FAILURE, _time(f.first_failure)),
        (DLT_LAST_FAILURE, _time(f.last_failure)),
        (DLT_ERROR_TYPE, f.error_type.encode()),
        (DLT_ERROR_MESSAGE, _clip(f.message, MAX_MESSAGE_BYTES)),
        (DLT_STACKTRACE, _clip(f.stacktrace, MAX_STACK_BYTES, tail=True)),
    ]
    return headers


def record_bytes(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> int:
    """About what a record occupies in a one-record batch (what ``max.message.bytes`` limits)."""
    return (
        _RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
        + sum(len(n.encode("utf-8", "surrogateescape")) + (len(v) if v else 0) + _HEADER_OVERHEAD for n, v in headers)
    )


# What a letter that does not fit leaves out, step by step.
_STEPS = (
    (), ("stacktrace", "error-message"), ("stacktrace", "error-message", "value"),
    ("stacktrace", "error-message", "value", "headers", "key"),
)
LAST_STEP = len(_STEPS) - 1


def shrunk(record: Record, step: int) -> Record:
    """``record`` (a dead letter) without what step ``step`` leaves out (0: unchanged)."""
    if step == 0:
        return record
    topic, key, value, headers = record
    left_out = _STEPS[step]
    size = record_bytes(key, value, headers)
    kept: list[tuple[str, bytes]] = []
    for name, raw in headers:
        if name == DLT_STACKTRACE:
            continue
        if name == DLT_ERROR_MESSAGE:
            raw = _clip(raw.decode("utf-8", "replace"), _SHORT_MESSAGE_BYTES)
        elif "headers" in left_out and not name.startswith(DLT_PREFIX):
            continue
        if name not in (DLT_OMITTED, DLT_ORIGINAL_BYTES):
            kept.append((name, raw))
    kept += [(DLT_OMITTED, ",".join(left_out).encode()), (DLT_ORIGINAL_BYTES, str(size).encode())]
    return (
        topic, None if "key" in left_out else key, None if "value" in left_out else value, kept,
    )


def fitted(record: Record, limit: int | None, step: int = 0) -> tuple[Record, int]:
    """The first version of a dead letter, from ``step`` on, that fits ``limit`` bytes; and its step."""
    while step < LAST_STEP:
        candidate = shrunk(record, step)
        if limit is None or record_bytes(candidate[1], candidate[2], candidate[3]) <= limit:
            return candidate, step
        step += 1
    return shrunk(record, LAST_STEP), LAST_STEP


def letter_record(letter: DeadLetter, settings: ConsumerSettings, retry_topics: AbstractSet[str]) -> Record:
    """The dead-letter record of ``letter``: its topic, the original key and value, the headers.

    A letter from a retry topic that names no source (bad retry headers) goes to the
    dead-letter topic of the retry topic's source.
    """
    source = origin_of(letter.topic) if letter.topic in retry_topics else None
    return settings.dead_letter_topic_for(source or letter.topic), letter.key, letter.value, dead_letter_headers(letter)


def on_the_wire(record: Record) -> Record:
    """``record`` as it is sent: aiokafka cannot send a record with neither key nor value (Kafka
    can), so the letter of a tombstone, or one left without both, carries an empty value and
    ``eventq-dlt-null-value: true`` instead."""
    topic, key, value, headers = record
    if key is None and value is None:
        return topic, key, b"", [*headers, (DLT_NULL_VALUE, b"true")]
    return record


class DeadLetterSink:
    """Publishes dead letters (and retry records) with an idempotent ``acks=all`` producer.

    :meth:`send` returns only when the broker acknowledged every record, and raises
    (a :class:`~eventq.errors.PublishError`) otherwise: the caller then must not
    commit past those records.
    """

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 30.0) -> None:
        self._kafka = kafka
        self._timeout_s = timeout_s
        self._aio: AIOKafkaProducer | None = None
        self.limits: dict[str, int] = {}  # dead-letter topic -> its max.message.bytes, where known

    async def start(self) -> None:
        """Connect; raises BrokerUnavailable if no broker answers."""
        aio = AIOKafkaProducer(
            **self._kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self._timeout_s * 1000),
            max_request_size=16 * 1024 * 1024,
        )
        try:
            await aio.start()
        except Exception as exc:
            await aio.stop()
            raise translate(exc, topic="", settings=self._kafka) from exc
        self._aio = aio

    async def stop(self) -> None:
        """Disconnect, waiting at most the timeout for unacknowledged letters."""
        aio, self._aio = self._aio, None
        if aio is not None:
            await stop_producer(aio, self._timeout_s)

    async def send(self, letters: Sequence[Record], others: Sequence[Record] = ()) -> None:
        """Publish dead letters and other records (retry hand-offs); return once all are acknowledged.

        A dead letter larger than its topic's known limit (:attr:`limits`), or refused by
        the broker as too large, is sent again in a smaller version (:func:`fitted`):
        a permanent error is never retried as it is.
        """
        if self._aio is None:
            raise RuntimeError("DeadLetterSink is not started")
        # (the record as it would be whole, the step it is sent at; None: not a letter)
        todo: list[tuple[Record, int | None]] = [
            (record, fitted(record, self.limits.get(record[0]))[1]) for record in letters
        ]
        todo += [(record, None) for record in others]
        while todo:
            failed = await self._send_once(todo)
            todo = []
            for (record, step), error in failed:
                if isinstance(error, MessageTooLarge) and step is not None and step < LAST_STEP:
                    todo.append((record, step + 1))
                    continue
                raise error

    async def _send_once(
        self, records: list[tuple[Record, int | None]]
    ) -> list[tuple[tuple[Record, int | None], EventqError]]:
        assert self._aio is not None
        aio = self._aio
        topic = ""
        futures = []
        try:
            for entry in records:
                record, step = entry
                topic, key, value, headers = on_the_wire(shrunk(record, step) if step else record)
                try:
                    futures.append((entry, await aio.send(topic, value, key=key, headers=headers)))
                except (ke.MessageSizeTooLargeError, ke.RecordTooLargeError) as exc:
                    futures.append((entry, _failed(exc)))
            async with asyncio.timeout(self._timeout_s):
                results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        except TimeoutError as exc:
            raise PublishTimeout(topic, f"not acknowledged within {self._timeout_s} s") from exc
        except Exception as exc:
            raise translate(exc, topic=topic, settings=self._kafka) from exc
        return [
            (entry, translate(result, topic=entry[0][0], settings=self._kafka))
            for (entry, _), result in zip(futures, results, strict=True)
            if isinstance(result, Exception)
        ]


def _failed(exc: Exception) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
