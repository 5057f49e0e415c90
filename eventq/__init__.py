"""eventq: an at-least-once event queue for Python on Apache Kafka.

The producer and consumer sides are importable from here; configuration of logging, tracing and
signals is left to the application (or to the ``eventq`` CLI).
"""

from eventq.config import KafkaSettings
from eventq.consumers import App, BatchContext, Consumer, ConsumerSettings, Context, Hooks
from eventq.errors import (
    BrokerUnavailable,
    ConfigError,
    ConsumerError,
    EventError,
    EventqError,
    EventTooLarge,
    InvalidEvent,
    MessageTooLarge,
    PublishError,
    PublishTimeout,
    RegistrationError,
    Reject,
    RetryLater,
    SchemaViolation,
    TopicNotFound,
    UnknownEventType,
)
from eventq.producers import Failed, Producer, ProducerSettings, Published, PublishReport
from eventq.schemas import Event, SchemaRegistry, caused_by

__version__ = "0.1.0"

__all__ = [
    "App",
    "BatchContext",
    "Consumer",
    "ConsumerError",
    "ConsumerSettings",
    "Context",
    "Hooks",
    "RegistrationError",
    "Reject",
    "RetryLater",
    "BrokerUnavailable",
    "ConfigError",
    "Event",
    "EventError",
    "EventTooLarge",
    "EventqError",
    "Failed",
    "InvalidEvent",
    "KafkaSettings",
    "MessageTooLarge",
    "Producer",
    "ProducerSettings",
    "PublishError",
    "PublishReport",
    "PublishTimeout",
    "Published",
    "SchemaRegistry",
    "SchemaViolation",
    "TopicNotFound",
    "UnknownEventType",
    "caused_by",
]
