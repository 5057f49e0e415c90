"""Non-blocking retries through retry topics, for handlers that do not need order.

A handler registered with ``retry_topics=True`` does not hold its partition while it
waits to retry: a failed event is republished to ``<topic>.retry.<n>`` (n = the
attempts made so far) with a due time, and the source offset moves on. The daemon
also consumes the retry topics; a retry record waits until its due time (each level
has one delay, so a level's records are due in offset order), then runs the handler
again. After the last attempt the event is dead-lettered as if it had never left its
source topic: the dead letter names the source topic, partition and offset.

A retry record is the original record (key, value, headers) plus:

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

PREFIX = "eventq-retry-"


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


def parse(headers: Sequence[tuple[str, bytes]]) -> RetryState | None:
    """The retry state carried by a record's headers, or None if it has none (or a broken one)."""
    values = {name[len(PREFIX):]: raw for name, raw in headers if name.startswith(PREFIX)}
    try:
        return RetryState(
            topic=values["topic"].decode(),
            partition=int(values["partition"]),
            offset=int(values["offset"]),
            timestamp=int(values["timestamp"]),
            attempts=int(values["attempts"]),
            due_ms=int(values["due"]),
            first_failure=datetime.fromisoformat(values["first-failure"].decode()),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers without eventq's retry headers."""
    return [(name, raw) for name, raw in headers if not name.startswith(PREFIX)]


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
        (PREFIX + "topic", state.topic.encode()),
        (PREFIX + "partition", str(state.partition).encode()),
        (PREFIX + "offset", str(state.offset).encode()),
        (PREFIX + "timestamp", str(state.timestamp).encode()),
        (PREFIX + "attempts", str(state.attempts).encode()),
        (PREFIX + "due", str(state.due_ms).encode()),
        (PREFIX + "first-failure", state.first_failure.astimezone(UTC).isoformat(timespec="milliseconds").encode()),
        (PREFIX + "error-type", f"{kind.__module__}.{kind.__qualname__}".encode()),
        (PREFIX + "error-message", message.encode()),
    ]
