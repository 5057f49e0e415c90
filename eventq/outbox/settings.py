"""Outbox relay settings: a frozen dataclass with ``from_env()``, its variables declared in :data:`RELAY`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventq.config import KafkaSettings
from eventq.consumers.settings import CONSUMER
from eventq.database import DatabaseSettings
from eventq.errors import ConfigError
from eventq.producers.settings import ProducerSettings
from eventq.settings_table import Setting, table


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """How an outbox relay reads the table, publishes, backs off and reports.

    ``producer`` is how it publishes (the ``EVENTQ_*`` producer variables; its schemas
    are not used: rows were validated when they were added), with this ``kafka``.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    batch_size: int = 1000
    poll_interval_s: float = 1.0
    keep_published_s: float = 0.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    health_port: int | None = None
    health_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        RELAY.check(self)
        if self.backoff_max_s < self.backoff_initial_s:
            var = RELAY.variable
            raise ConfigError(
                f"backoff_max_s must be at least backoff_initial_s ({var('backoff_max_s')}, "
                f"{var('backoff_initial_s')})"
            )

    def publisher(self) -> ProducerSettings:
        """The relay's producer settings: ``producer`` with this relay's Kafka settings."""
        return dataclasses.replace(self.producer, kafka=self.kafka)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> RelaySettings:
        """Read the variables of :data:`RELAY` (README, Configuration), the Kafka, database and producer
        ones into the nested settings; ``overrides`` win and are not read."""
        return RELAY.read(
            env, overrides, kafka=KafkaSettings.from_env, database=DatabaseSettings.from_env,
            producer=ProducerSettings.nested(overrides),
        )


RELAY = table(
    RelaySettings,
    Setting("batch_size", "EVENTQ_OUTBOX_BATCH_SIZE", "int", minimum=1, maximum=100_000,
            help="Outbox rows read and published per round"),
    Setting("poll_interval_s", "EVENTQ_OUTBOX_POLL_INTERVAL_S", "seconds", minimum=0.01,
            help="longest wait for new rows when no NOTIFY arrives"),
    Setting("keep_published_s", "EVENTQ_OUTBOX_KEEP_PUBLISHED_S", "seconds",
            help="keep published rows this long (0: delete them once acknowledged)"),
    Setting("backoff_initial_s", "EVENTQ_OUTBOX_BACKOFF_INITIAL_S", "seconds", minimum=0.01,
            help="first wait after a failed send to a topic"),
    Setting("backoff_max_s", "EVENTQ_OUTBOX_BACKOFF_MAX_S", "seconds", minimum=0.01,
            help="longest wait between sends to a failing topic"),
    CONSUMER["health_port"],
    CONSUMER["health_host"],
)
"""The relay's variables, one record per field of :class:`RelaySettings` but the nested settings."""
