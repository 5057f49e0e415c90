"""Consumer daemon settings: a frozen dataclass with ``from_env()``.

Every field has a default that suits a small service; ``from_env`` reads the
``EVENTQ_*`` variable that :data:`CONSUMER` declares for each field, and
``eventq consume``'s options are built from the same records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventq.config import KafkaSettings
from eventq.consumers.app import App
from eventq.database import DatabaseSettings
from eventq.errors import ConfigError
from eventq.producers.settings import PRODUCER, ProducerSettings
from eventq.schemas.registry import SchemaRegistry
from eventq.settings_table import Setting, table

Ordering = Literal["partition", "key"]
UnknownTypePolicy = Literal["dead_letter", "skip"]


@dataclass(frozen=True, kw_only=True)
class ConsumerSettings:
    """How a consumer daemon fetches, retries, dead-letters and stops.

    ``group_id`` and ``topics`` default to what the :class:`~eventq.consumers.App`
    declares; set them here (or with ``EVENTQ_GROUP`` / ``EVENTQ_TOPICS``) to override.
    ``producer`` is how the daemon publishes dead letters' follow-ups and ``ctx.publish``
    events (the ``EVENTQ_*`` producer variables); the daemon uses it with this ``kafka``.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    group_id: str | None = None
    topics: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    max_batch_size: int = 500
    max_batch_timeout_s: float = 0.5
    ordering: Ordering = "partition"
    max_concurrency: int = 64
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2
    dead_letter_suffix: str = ".dlt"
    dead_letter_topic: str | None = None
    create_topics: bool = True
    dead_letter_timeout_s: float = 30.0
    on_unknown_type: UnknownTypePolicy = "dead_letter"
    shutdown_grace_s: float = 30.0
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_s: float = 10.0
    max_poll_interval_s: float = 300.0
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    pool_size: int = 4
    workers: int = 1

    def __post_init__(self) -> None:
        CONSUMER.check(self)
        var = CONSUMER.variable
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"backoff_max_s must be at least backoff_initial_s ({var('backoff_max_s')}, {var('backoff_initial_s')})"
            )
        if not self.dead_letter_suffix and self.dead_letter_topic is None:
            raise ConfigError("dead_letter_suffix must not be empty: the dead-letter topic would be the source topic")
        if self.max_poll_interval_s < self.session_timeout_s:
            raise ConfigError(
                f"max_poll_interval_s must be at least session_timeout_s ({var('max_poll_interval_s')}, "
                f"{var('session_timeout_s')})"
            )
        # A revocation waits up to shutdown_grace_s for in-flight work, then up to
        # session_timeout_s for its commit, inside the rebalance, which the group gives
        # max_poll_interval_s: a longer wait gets the daemon thrown out of the group,
        # and the next rebalance starts over.
        if self.shutdown_grace_s + self.session_timeout_s >= self.max_poll_interval_s:
            raise ConfigError(
                f"shutdown_grace_s + session_timeout_s ({self.shutdown_grace_s:g} + {self.session_timeout_s:g}) must "
                f"be less than max_poll_interval_s ({self.max_poll_interval_s:g}) ({var('shutdown_grace_s')}, "
                f"{var('session_timeout_s')}, {var('max_poll_interval_s')})"
            )
        if self.dead_letter_topic is not None and self.dead_letter_topic in self.topics:
            raise ConfigError(
                f"dead-letter topic {self.dead_letter_topic!r} (dead_letter_topic) is also consumed; its "
                "failures would loop back into it. Replay dead letters with eventq dlq replay instead"
            )
        for topic in self.topics:
            if topic.endswith(self.dead_letter_suffix) and self.dead_letter_topic is None:
                raise ConfigError(
                    f"topic {topic!r} ends in the dead-letter suffix {self.dead_letter_suffix!r}; consuming a "
                    "dead-letter topic would dead-letter into itself. Replay dead letters with eventq dlq replay"
                )

    def dead_letter_topic_for(self, topic: str) -> str:
        """Where failed events of ``topic`` go."""
        return self.dead_letter_topic or f"{topic}{self.dead_letter_suffix}"

    def subscription(self, app: App) -> tuple[str, tuple[str, ...]]:
        """The consumer group and topics ``app`` runs with: these settings' where set, else the App's.

        Raises ConfigError, saying what to do, when there are no topics or the App has no handlers.
        """
        topics = self.topics or app.topics
        if not topics:
            raise ConfigError(
                f"no topics to consume for app {app.name!r}; pass App(..., topics=[...]) or set EVENTQ_TOPICS "
                "(ConsumerSettings(topics=...))"
            )
        if not app.handlers:
            raise ConfigError(f"app {app.name!r} has no handlers; register one with @app.handler('type.v1')")
        return self.group_id or app.name, topics

    def registry_for(self, app: App) -> SchemaRegistry:
        """What the daemon of ``app`` validates with: the App's schema sources, these settings', the inline ones."""
        return SchemaRegistry.load(app.schemas + self.schemas, inline=app.inline_schemas)

    def producer_for(self, schemas: tuple[str, ...]) -> ProducerSettings:
        """The daemon's producer: ``producer`` with this daemon's Kafka settings and ``schemas`` + ``self.schemas``."""
        return dataclasses.replace(self.producer, kafka=self.kafka, schemas=schemas + self.schemas)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ConsumerSettings:
        """Read the variables of :data:`CONSUMER` (README, Configuration), the Kafka and database ones into
        ``kafka`` and ``database``, and the producer ones into ``producer``; ``overrides`` win and are not read."""
        return CONSUMER.read(
            env, overrides, kafka=KafkaSettings.from_env, database=DatabaseSettings.from_env,
            producer=ProducerSettings.nested(overrides),
        )


CONSUMER = table(
    ConsumerSettings,
    Setting("group_id", "EVENTQ_GROUP", help="Consumer group", default_text="the App's name"),
    Setting("topics", "EVENTQ_TOPICS", "csv", help="Topics to consume", default_text="the App's topics"),
    PRODUCER["schemas"],  # the same variable: the daemon validates with these schemas and publishes with them
    Setting("max_batch_size", "EVENTQ_MAX_BATCH_SIZE", "int", minimum=1, help="Records per poll"),
    Setting("max_batch_timeout_s", "EVENTQ_MAX_BATCH_TIMEOUT_S", "seconds", minimum=0.001,
            help="longest wait for the first record of a poll"),
    Setting("ordering", "EVENTQ_ORDERING", "choice", choices=("partition", "key"),
            help="how a partition's events run: partition, one at a time; key, keys concurrently"),
    Setting("max_concurrency", "EVENTQ_MAX_CONCURRENCY", "int", minimum=1,
            help="keys in flight per partition with ordering=key"),
    Setting("max_attempts", "EVENTQ_MAX_ATTEMPTS", "int", minimum=1, help="Handler attempts before dead-lettering"),
    Setting("backoff_initial_s", "EVENTQ_BACKOFF_INITIAL_S", "seconds", help="first retry delay (0: no back-off)"),
    Setting("backoff_max_s", "EVENTQ_BACKOFF_MAX_S", "seconds", help="longest retry delay"),
    Setting("backoff_jitter", "EVENTQ_BACKOFF_JITTER", "float", minimum=0, maximum=1,
            help="± fraction of each retry delay; 0 makes back-off exact"),
    Setting("dead_letter_suffix", "EVENTQ_DEAD_LETTER_SUFFIX", help="dead-letter topic = topic + suffix"),
    Setting("dead_letter_topic", "EVENTQ_DEAD_LETTER_TOPIC", help="one dead-letter topic for every source topic"),
    Setting("create_topics", "EVENTQ_CREATE_TOPICS", "bool",
            help="create missing dead-letter and retry topics at start-up"),
    Setting("dead_letter_timeout_s", "EVENTQ_DEAD_LETTER_TIMEOUT_S", "seconds", minimum=0.001,
            help="wait for a dead letter's acknowledgement, then retry"),
    Setting("on_unknown_type", "EVENTQ_ON_UNKNOWN_TYPE", "choice", choices=("dead_letter", "skip"),
            help="what to do with an event of no handler's type"),
    Setting("shutdown_grace_s", "EVENTQ_SHUTDOWN_GRACE_S", "seconds",
            help="longest wait for running work on stop or revocation"),
    Setting("auto_offset_reset", "EVENTQ_AUTO_OFFSET_RESET", "choice", choices=("earliest", "latest"),
            help="where a new group starts"),
    Setting("session_timeout_s", "EVENTQ_SESSION_TIMEOUT_S", "seconds", minimum=1, help="group session timeout"),
    Setting("max_poll_interval_s", "EVENTQ_MAX_POLL_INTERVAL_S", "seconds", help="Kafka's max.poll.interval.ms"),
    Setting("health_port", "EVENTQ_HEALTH_PORT", "int", minimum=0, maximum=65535,
            help="Serve /livez, /readyz and /metrics (Prometheus) on this port, 0 for any free port",
            default_text="off"),
    Setting("health_host", "EVENTQ_HEALTH_HOST", help="address the health endpoint listens on"),
    Setting("pool_size", "EVENTQ_DB_POOL_SIZE", "int", minimum=2, maximum=1000,
            help="PostgreSQL connections per daemon"),
    Setting("workers", "EVENTQ_WORKERS", "int", minimum=1, maximum=64,
            help="Member processes of the group, supervised and restarted; 1: this process is the daemon"),
)
"""The consumer daemon's variables, one record per field of :class:`ConsumerSettings` but the nested settings."""
