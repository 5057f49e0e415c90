"""Dead letters: the record as it arrived, plus where it came from and why it failed.

A dead-letter record keeps the original key, value and headers byte for byte (any
``eventq-dlt-*`` headers of an earlier failure are replaced), and adds:

==========================  ==================================================
``eventq-dlt-topic``        source topic
``eventq-dlt-partition``    source partition
``eventq-dlt-offset``       source offset
``eventq-dlt-timestamp``    source record timestamp (ms since the epoch)
``eventq-dlt-group``        consumer group
``eventq-dlt-handler``      handler (module.qualname), empty if none ran
``eventq-dlt-reason``       ``exhausted`` | ``rejected`` | ``invalid`` | ``unknown-type``
``eventq-dlt-attempts``     handler attempts made (0 if none ran)
``eventq-dlt-first-failure`` RFC 3339 time of the first failure
``eventq-dlt-last-failure`` RFC 3339 time of the last failure
``eventq-dlt-error-type``   exception class, module-qualified
``eventq-dlt-error-message`` its message (at most 2,000 bytes)
``eventq-dlt-stacktrace``   its traceback, innermost part (at most 8,000 bytes)
``eventq-dlt-traceparent``  W3C context of the dead letter's ``send`` span (only
                            with tracing on): ``eventq dlq replay`` continues the
                            event's trace from it
==========================  ==================================================

The record goes to the dead-letter topic with its original key (so dead letters of
one key stay in order) and the time of dead-lettering as its timestamp. See
docs/adr/0007-dead-letter-records.md.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from opentelemetry.trace import SpanContext

from eventq.config import KafkaSettings
from eventq.errors import PublishTimeout
from eventq.kafka import stop_producer, translate

PREFIX = "eventq-dlt-"
MAX_MESSAGE_BYTES = 2_000
MAX_STACK_BYTES = 8_000

# Headers `eventq dlq replay` adds to a republished dead letter (see eventq.dlq.replay);
# the daemon reads the count to let a replayed dead letter run its handler again.
REPLAY_PREFIX = "eventq-replay-"
REPLAY_COUNT = REPLAY_PREFIX + "count"
REPLAY_FROM = REPLAY_PREFIX + "from"
REPLAY_RUN = REPLAY_PREFIX + "run"
REPLAY_AT = REPLAY_PREFIX + "at"
TRACEPARENT = PREFIX + "traceparent"

REASON_EXHAUSTED = "exhausted"
REASON_REJECTED = "rejected"
REASON_INVALID = "invalid"
REASON_UNKNOWN_TYPE = "unknown-type"


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
    span: SpanContext | None = None  # the span that failed the event: parent of the dead letter's send span


def _clip(text: str, limit: int, *, tail: bool = False) -> bytes:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    cut = raw[-limit:] if tail else raw[:limit]
    return cut.decode("utf-8", "ignore").encode()


def _time(value: datetime | None) -> bytes:
    return (value or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original headers (earlier ``eventq-dlt-*`` ones dropped) plus this failure's."""
    f = letter.failure
    headers = [(name, value) for name, value in letter.headers if not name.startswith(PREFIX)]
    headers += [
        (PREFIX + "topic", letter.topic.encode()),
        (PREFIX + "partition", str(letter.partition).encode()),
        (PREFIX + "offset", str(letter.offset).encode()),
        (PREFIX + "timestamp", str(letter.timestamp).encode()),
        (PREFIX + "group", letter.group.encode()),
        (PREFIX + "handler", f.handler.encode()),
        (PREFIX + "reason", f.reason.encode()),
        (PREFIX + "attempts", str(f.attempts).encode()),
        (PREFIX + "first-failure", _time(f.first_failure)),
        (PREFIX + "last-failure", _time(f.last_failure)),
        (PREFIX + "error-type", f.error_type.encode()),
        (PREFIX + "error-message", _clip(f.message, MAX_MESSAGE_BYTES)),
        (PREFIX + "stacktrace", _clip(f.stacktrace, MAX_STACK_BYTES, tail=True)),
    ]
    return headers


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

    async def send(self, records: Sequence[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> None:
        """Publish ``(topic, key, value, headers)`` records; return once all are acknowledged."""
        if self._aio is None:
            raise RuntimeError("DeadLetterSink is not started")
        if not records:
            return
        aio = self._aio
        topic = ""
        try:
            futures = []
            for topic, key, value, headers in records:
                futures.append(await aio.send(topic, value, key=key, headers=headers))
            async with asyncio.timeout(self._timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise PublishTimeout(topic, f"not acknowledged within {self._timeout_s} s") from exc
        except Exception as exc:
            raise translate(exc, topic=topic, settings=self._kafka) from exc
