"""Non-blocking retries through retry topics, for handlers that do not need order.

A handler registered with ``retry_topics=True`` does not hold its partition while it
waits to retry: a failed event is republished to ``<topic>.retry.<n>`` (n = the
attempts made so far) with a due time, and the source offset moves on. The daemon
also consumes the retry topics; a retry record waits until its due time (each level
has one delay, so a level's records are due in offset order), then runs the handler
again. After the last attempt the event is dead-lettered as if it had never left its
source topic: the dead letter names the source topic, partition and offset.

A retry record is the original record (key, value, headers) plus (the names are
declared in :mod:`eventq.wire`):

============================  ============================================
``eventq-retry-topic``        source topic
``eventq-retry-partition``    source partition
``eventq-retry-offset``       source offset
``eventq-retry-timestamp``    source record timestamp (ms)
``eventq-retry-attempts``     attempts made so far
``eventq-retry-due``          when to try again (ms since the epoch)
``eventq-retry-first-failure`` time of the first failure (RFC 3339)
``eventq-retry-error-type``   the last failure's exception class
``eventq-retry-error-message`` its message (at most 2,000 bytes)
============================  ============================================

The guarantee does not change: the source offset is committed only after the broker
acknowledged the retry record, so an event is always in its source topic (before
the commit), a retry topic, ``processed_events`` or the dead-letter topic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from eventq.kafka import TOPIC_NAME
from eventq.wire import (
    RETRY_ATTEMPTS,
    RETRY_DUE,
    RETRY_ERROR_MESSAGE,
    RETRY_ERROR_TYPE,
    RETRY_FIRST_FAILURE,
    RETRY_OFFSET,
    RETRY_PARTITION,
    RETRY_PREFIX,
    RETRY_TIMESTAMP,
    RETRY_TOPIC,
)


def retry_topic(origin: str, level: int) -> str:
    """The retry topic for events of ``origin`` that failed ``level`` times."""
    return f"{origin}.retry.{level}"


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where a retried event came from and how often it failed."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    attempts: int
    due_ms: int
    first_failure: datetime

    def seconds_until_due(self) -> float:
        return max(0.0, self.due_ms / 1000 - time.time())


_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


def origin_of(retry: str) -> str | None:
    """The source topic a retry topic serves (``orders.retry.2`` → ``orders``), or None."""
    origin, sep, level = retry.rpartition(".retry.")
    return origin if sep and level.isdigit() else None


def parse(headers: Sequence[tuple[str, bytes | None]], *, topic: str | None = None) -> RetryState | None:
    """The retry state carried by a record's headers, or None if it has none or a broken one.

    Headers come from outside like any record's: every field must be in range (a partition
    an int32, offsets and times an int64, a Kafka topic name), and when ``topic`` (the retry
    topic the record was read from) is given, the state must name that retry topic's source.
    """
    values = {name: raw for name, raw in headers if name.startswith(RETRY_PREFIX)}
    try:
        state = RetryState(
            topic=_field(values, RETRY_TOPIC).decode(),
            partition=_bounded(values, RETRY_PARTITION, _INT32),
            offset=_bounded(values, RETRY_OFFSET, _INT64),
            timestamp=int(_field(values, RETRY_TIMESTAMP)),
            attempts=_bounded(values, RETRY_ATTEMPTS, 1000),
            due_ms=_bounded(values, RETRY_DUE, _INT64),
            first_failure=datetime.fromisoformat(_field(values, RETRY_FIRST_FAILURE).decode()[:64]),
        )
    except (KeyError, ValueError, UnicodeDecodeError, OverflowError):
        return None
    if not TOPIC_NAME.fullmatch(state.topic) or abs(state.timestamp) > _INT64 or state.first_failure.tzinfo is None:
        return None
    if topic is not None and origin_of(topic) != state.topic:
        return None
    return state


def _field(values: dict[str, bytes | None], name: str) -> bytes:
    raw = values[name]
    if raw is None or len(raw) > 64 and name != RETRY_TOPIC:
        raise ValueError(name)
    return raw


def _bounded(values: dict[str, bytes | None], name: str, top: int) -> int:
    number = int(_field(values, name))
    if not 0 <= number <= top:
        raise ValueError(name)
    return number


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers without eventq's retry headers."""
    return [(name, raw) for name, raw in headers if not name.startswith(RETRY_PREFIX)]


def handoff_headers(
    headers: Sequence[tuple[str, bytes]],
    state: RetryState,
    *,
    error: BaseException,
) -> list[tuple[str, bytes]]:
    """The headers of the next retry record: the original ones plus ``state`` and the error."""
    kind = type(error)
    message = str(error).encode("utf-8", "replace")[:2000].decode("utf-8", "ignore")
    return [
        *original_headers(headers),
        (RETRY_TOPIC, state.topic.encode()),
        (RETRY_PARTITION, str(state.partition).encode()),
        (RETRY_OFFSET, str(state.offset).encode()),
        (RETRY_TIMESTAMP, str(state.timestamp).encode()),
        (RETRY_ATTEMPTS, str(state.attempts).encode()),
        (RETRY_DUE, str(state.due_ms).encode()),
        (RETRY_FIRST_FAILURE, state.first_failure.astimezone(UTC).isoformat(timespec="milliseconds").encode()),
        (RETRY_ERROR_TYPE, f"{kind.__module__}.{kind.__qualname__}".encode()),
        (RETRY_ERROR_MESSAGE, message.encode()),
    ]
