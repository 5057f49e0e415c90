"""Every error eventq raises, in one tree.

::

    EventqError                      base; ``retriable`` says whether trying again can help
    ├── ConfigError                  invalid settings (names the field and what to do)
    │   └── RegistrationError        a handler registered wrongly (raised at import time)
    ├── EventError                   an event that cannot be sent or understood
    │   ├── InvalidEvent             a record that is not a valid eventq/CloudEvents envelope
    │   │   └── UndecodableRecord    a record the Kafka client could not read whole
    │   ├── SchemaViolation          a payload that fails its event type's JSON Schema
    │   ├── UnknownEventType         an event type with no declared schema
    │   └── EventTooLarge            an encoded event over ``max_event_bytes``
    ├── PublishError                 the broker did not take an event (carries ``topic``)
    │   ├── BrokerUnavailable        no broker reachable at the bootstrap servers (retriable)
    │   ├── PublishTimeout           not acknowledged in time (retriable)
    │   ├── TopicNotFound            the topic does not exist (auto-create is off)
    │   └── MessageTooLarge          the broker refused the record's size
    ├── DatabaseUnavailable          PostgreSQL did not answer or refused the connection
    ├── ConsumerError                a consumer daemon cannot start (broker, topics, tables)
    ├── RelayError                   an outbox relay cannot start (no outbox table)
    ├── HandlerOutcome               raised by a handler to steer its event
    │   ├── RetryLater               try again after ``delay_s`` (counts as an attempt)
    │   └── Reject                   dead-letter now, no more attempts
    └── DevStackError                the local Kafka/PostgreSQL stack could not be run

Any other exception a handler raises is a transient failure: retried with back-off up
to the attempt limit, then dead-lettered.

aiokafka exceptions are translated into this tree in one place
(:mod:`eventq.kafka`), asyncpg's in another (:mod:`eventq.database`), always
``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations


class EventqError(Exception):
    """Base of every eventq error."""

    retriable: bool = False


class ConfigError(EventqError, ValueError):
    """A setting is missing or invalid; the message names it and says how to fix it."""


class RegistrationError(ConfigError):
    """A handler was registered wrongly: not ``async def``, a duplicate type, an unknown option."""


class EventError(EventqError):
    """An event that cannot be encoded, decoded or validated. Never retriable."""


class InvalidEvent(EventError):
    """A record is not a valid envelope; ``reason`` says which part is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UndecodableRecord(InvalidEvent):
    """A record the Kafka client could not read whole (say a header name that is not UTF-8)."""


class SchemaViolation(InvalidEvent):
    """A payload does not match the JSON Schema declared for its event type."""

    def __init__(self, event_type: str, detail: str) -> None:
        super().__init__(f"payload of {event_type!r} violates its schema: {detail}")
        self.event_type = event_type
        self.detail = detail


class UnknownEventType(EventError):
    """No JSON Schema is declared for an event type."""

    def __init__(self, event_type: str, known: list[str]) -> None:
        hint = ", ".join(known[:10]) or "none"
        super().__init__(
            f"no schema declared for event type {event_type!r}; add a JSON Schema file "
            f"named '{event_type}.json' to your schema directory (declared: {hint})"
        )
        self.event_type = event_type


class EventTooLarge(EventError):
    """An encoded event is larger than the configured ``max_event_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"encoded event is {size} bytes, over the limit of {limit} bytes "
            "(max_event_bytes / EVENTQ_MAX_EVENT_BYTES); store large payloads elsewhere "
            "and publish a reference"
        )
        self.size = size
        self.limit = limit


class PublishError(EventqError):
    """The broker did not acknowledge an event; nothing is reported published."""

    def __init__(self, topic: str, reason: str, *, doing: str = "publish to") -> None:
        # ``doing``: what failed on the topic, for the admin paths ("create", "describe").
        where = f"{doing} topic {topic!r} failed" if topic else f"cannot {doing.split()[0]}"
        super().__init__(f"{where}: {reason}")
        self.topic = topic
        self.reason = reason


class BrokerUnavailable(PublishError):
    """No broker answered at the bootstrap servers."""

    retriable = True


class PublishTimeout(PublishError):
    """The broker did not acknowledge within the delivery timeout."""

    retriable = True


class TopicNotFound(PublishError):
    """The topic does not exist and the broker does not create topics on demand."""


class MessageTooLarge(PublishError):
    """The broker (or client limit) refused the record because of its size."""


class DatabaseUnavailable(EventqError):
    """PostgreSQL could not be reached (retriable) or refused the connection (not retriable)."""

    def __init__(self, url: str, reason: str, *, retriable: bool = True) -> None:
        super().__init__(
            f"cannot use the database at {url}: {reason}; start it (eventq dev up) or fix EVENTQ_DATABASE_URL"
        )
        self.retriable = retriable


class ConsumerError(EventqError):
    """A consumer daemon cannot start or run; the message says what to fix."""

    def __init__(self, reason: str, *, retriable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


class RelayError(EventqError):
    """An outbox relay cannot start or go on for a reason waiting will not fix."""


class HandlerOutcome(EventqError):
    """Base of the exceptions a handler raises on purpose to steer its event."""


class RetryLater(HandlerOutcome):
    """Try this event again after ``delay_s`` seconds; the attempt still counts.

    Other partitions (and, with ``ordering="key"``, other keys) keep going meanwhile.
    """

    retriable = True

    def __init__(self, delay_s: float, reason: str = "handler asked to retry later") -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be 0 or more")
        super().__init__(reason)
        self.delay_s = delay_s
        self.reason = reason


class Reject(HandlerOutcome):
    """Dead-letter this event now: no further attempt can succeed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DevStackError(EventqError):
    """The local development stack (Kafka, PostgreSQL) could not be started or stopped."""
