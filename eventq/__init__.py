"""eventq: an at-least-once event queue for Python on Apache Kafka.

The producer and consumer sides are importable from here; configuration of logging, tracing and
signals is left to the application (or to the ``eventq`` CLI).
"""

from eventq.config import KafkaSettings
from eventq.consumers import App, BatchContext, Consumer, ConsumerSettings, Context, Instruments
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
from eventq.telemetry import Telemetry
from eventq.version import __version__

__all__ = [
    "__version__",
    "App",
    "BatchContext",
    "Consumer",
    "ConsumerError",
    "ConsumerSettings",
    "Context",
    "Instruments",
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
    "Telemetry",
    "TopicNotFound",
    "UnknownEventType",
    "caused_by",
]
