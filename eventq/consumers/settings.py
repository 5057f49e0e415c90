"""Consumer daemon settings: a frozen dataclass with ``from_env()``.

Every field has a default that suits a small service; ``from_env`` reads the
``EVENTQ_*`` variable named next to each field. The CLI's ``eventq consume``
options map to the same variables.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventq.config import KafkaSettings, check_seconds, env_float, env_int, env_str, read_env
from eventq.database import DatabaseSettings
from eventq.errors import ConfigError
from eventq.producers.settings import ProducerSettings

Ordering = Literal["partition", "key"]
UnknownTypePolicy = Literal["dead_letter", "skip"]


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


# Duration fields and their variables: each must be finite and fit aiokafka's int32 milliseconds.
_SECONDS = {
    "max_batch_timeout_s": "EVENTQ_MAX_BATCH_TIMEOUT_S",
    "backoff_initial_s": "EVENTQ_BACKOFF_INITIAL_S",
    "backoff_max_s": "EVENTQ_BACKOFF_MAX_S",
    "dead_letter_timeout_s": "EVENTQ_DEAD_LETTER_TIMEOUT_S",
    "shutdown_grace_s": "EVENTQ_SHUTDOWN_GRACE_S",
    "session_timeout_s": "EVENTQ_SESSION_TIMEOUT_S",
    "max_poll_interval_s": "EVENTQ_MAX_POLL_INTERVAL_S",
}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> Any:
    value = env_str(env, name, default) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is unknown; use {' or '.join(choices)}")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env_str(env, name)
    if raw is None:
        return default
    if raw.lower() not in _BOOLEANS:
        raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")
    return _BOOLEANS[raw.lower()]


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
    group_id: str | None = None  # EVENTQ_GROUP
    topics: tuple[str, ...] = ()  # EVENTQ_TOPICS (comma-separated)
    schemas: tuple[str, ...] = ()  # EVENTQ_SCHEMAS: extra schema sources for validation
    max_batch_size: int = 500  # EVENTQ_MAX_BATCH_SIZE: records per poll, across partitions
    max_batch_timeout_s: float = 0.5  # EVENTQ_MAX_BATCH_TIMEOUT_S: longest wait for a first record
    ordering: Ordering = "partition"  # EVENTQ_ORDERING: partition | key
    max_concurrency: int = 64  # EVENTQ_MAX_CONCURRENCY: keys in flight per partition (ordering=key)
    max_attempts: int = 5  # EVENTQ_MAX_ATTEMPTS: handler attempts before dead-lettering
    backoff_initial_s: float = 0.5  # EVENTQ_BACKOFF_INITIAL_S
    backoff_max_s: float = 30.0  # EVENTQ_BACKOFF_MAX_S
    backoff_jitter: float = 0.2  # EVENTQ_BACKOFF_JITTER: ± fraction; 0 makes back-off exact
    dead_letter_suffix: str = ".dlt"  # EVENTQ_DEAD_LETTER_SUFFIX: <topic><suffix>
    dead_letter_topic: str | None = None  # EVENTQ_DEAD_LETTER_TOPIC: one topic for every source
    create_topics: bool = True  # EVENTQ_CREATE_TOPICS: create missing dead-letter and retry topics
    dead_letter_timeout_s: float = 30.0  # EVENTQ_DEAD_LETTER_TIMEOUT_S: wait for the broker's ack, then retry
    on_unknown_type: UnknownTypePolicy = "dead_letter"  # EVENTQ_ON_UNKNOWN_TYPE
    shutdown_grace_s: float = 30.0  # EVENTQ_SHUTDOWN_GRACE_S: in-flight work on stop/revoke
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"  # EVENTQ_AUTO_OFFSET_RESET
    session_timeout_s: float = 10.0  # EVENTQ_SESSION_TIMEOUT_S
    max_poll_interval_s: float = 300.0  # EVENTQ_MAX_POLL_INTERVAL_S
    health_port: int | None = None  # EVENTQ_HEALTH_PORT: serve /livez and /readyz (0 = any port)
    health_host: str = "127.0.0.1"  # EVENTQ_HEALTH_HOST
    pool_size: int = 4  # EVENTQ_DB_POOL_SIZE: PostgreSQL connections per daemon
    workers: int = 1  # EVENTQ_WORKERS: eventq consume's member processes (1: no supervisor)

    def __post_init__(self) -> None:
        for name, variable in _SECONDS.items():
            check_seconds(getattr(self, name), name, variable)
        checks = (
            (self.max_batch_size >= 1, "max_batch_size must be at least 1 (EVENTQ_MAX_BATCH_SIZE)"),
            (self.max_batch_timeout_s > 0, "max_batch_timeout_s must be positive (EVENTQ_MAX_BATCH_TIMEOUT_S)"),
            (self.ordering in ("partition", "key"),
             f"ordering {self.ordering!r} (EVENTQ_ORDERING) is unknown; use partition or key"),
            (self.max_concurrency >= 1, "max_concurrency must be at least 1 (EVENTQ_MAX_CONCURRENCY)"),
            (self.max_attempts >= 1, "max_attempts must be at least 1 (EVENTQ_MAX_ATTEMPTS)"),
            (self.backoff_initial_s >= 0, "backoff_initial_s must be 0 or more (EVENTQ_BACKOFF_INITIAL_S)"),
            (self.backoff_max_s >= self.backoff_initial_s, "backoff_max_s must be at least backoff_initial_s "
             "(EVENTQ_BACKOFF_MAX_S, EVENTQ_BACKOFF_INITIAL_S)"),
            (0 <= self.backoff_jitter <= 1, "backoff_jitter must be between 0 and 1 (EVENTQ_BACKOFF_JITTER)"),
            (bool(self.dead_letter_suffix) or self.dead_letter_topic is not None,
             "dead_letter_suffix must not be empty: the dead-letter topic would be the source topic"),
            (self.on_unknown_type in ("dead_letter", "skip"),
             f"on_unknown_type {self.on_unknown_type!r} (EVENTQ_ON_UNKNOWN_TYPE) is unknown; use dead_letter or skip"),
            (self.dead_letter_timeout_s > 0, "dead_letter_timeout_s must be positive (EVENTQ_DEAD_LETTER_TIMEOUT_S)"),
            (self.shutdown_grace_s >= 0, "shutdown_grace_s must be 0 or more (EVENTQ_SHUTDOWN_GRACE_S)"),
            (self.auto_offset_reset in ("earliest", "latest"),
             "auto_offset_reset must be earliest or latest (EVENTQ_AUTO_OFFSET_RESET)"),
            (self.session_timeout_s >= 1, "session_timeout_s must be at least 1 (EVENTQ_SESSION_TIMEOUT_S)"),
            (self.max_poll_interval_s >= self.session_timeout_s,
             "max_poll_interval_s must be at least session_timeout_s (EVENTQ_MAX_POLL_INTERVAL_S, "
             "EVENTQ_SESSION_TIMEOUT_S)"),
            # A revocation waits up to shutdown_grace_s for in-flight work, then up to
            # session_timeout_s for its commit, inside the rebalance, which the group gives
            # max_poll_interval_s: a longer wait gets the daemon thrown out of the group,
            # and the next rebalance starts over.
            (self.shutdown_grace_s + self.session_timeout_s < self.max_poll_interval_s,
             f"shutdown_grace_s + session_timeout_s ({self.shutdown_grace_s:g} + {self.session_timeout_s:g}) must "
             f"be less than max_poll_interval_s ({self.max_poll_interval_s:g}) (EVENTQ_SHUTDOWN_GRACE_S, "
             "EVENTQ_SESSION_TIMEOUT_S, EVENTQ_MAX_POLL_INTERVAL_S)"),
            (self.health_port is None or 0 <= self.health_port <= 65535,
             "health_port must be 0-65535 (EVENTQ_HEALTH_PORT)"),
            (self.pool_size >= 2, "pool_size must be at least 2 (EVENTQ_DB_POOL_SIZE)"),
            (not isinstance(self.workers, bool) and 1 <= self.workers <= 64,
             "workers must be 1-64 (EVENTQ_WORKERS)"),
        )
        if isinstance(self.max_attempts, bool) or isinstance(self.max_batch_size, bool):
            raise ConfigError("max_attempts and max_batch_size must be whole numbers, not True/False")
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
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

    def producer_for(self, schemas: tuple[str, ...]) -> ProducerSettings:
        """The daemon's producer: ``producer`` with this daemon's Kafka settings and ``schemas`` + ``self.schemas``."""
        return dataclasses.replace(self.producer, kafka=self.kafka, schemas=schemas + self.schemas)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ConsumerSettings:
        """Read the ``EVENTQ_*`` variables named in the field comments (see README, Configuration),
        and the producer variables into ``producer``; ``overrides`` win and are not read."""
        e = os.environ if env is None else env
        seconds = {
            name: (lambda name=name, variable=variable: env_float(e, variable, _DEFAULTS[name]))
            for name, variable in _SECONDS.items()
        }
        return read_env(cls, {
            "kafka": lambda: KafkaSettings.from_env(e),
            "database": lambda: DatabaseSettings.from_env(e),
            "producer": lambda: ProducerSettings.from_env(e, kafka=overrides.get("kafka") or KafkaSettings.from_env(e)),
            "group_id": lambda: env_str(e, "EVENTQ_GROUP"),
            "topics": lambda: _csv(env_str(e, "EVENTQ_TOPICS")),
            "schemas": lambda: _csv(env_str(e, "EVENTQ_SCHEMAS")),
            "max_batch_size": lambda: env_int(e, "EVENTQ_MAX_BATCH_SIZE", 500, minimum=1),
            "ordering": lambda: _choice(e, "EVENTQ_ORDERING", "partition", ("partition", "key")),
            "max_concurrency": lambda: env_int(e, "EVENTQ_MAX_CONCURRENCY", 64, minimum=1),
            "max_attempts": lambda: env_int(e, "EVENTQ_MAX_ATTEMPTS", 5, minimum=1),
            "backoff_jitter": lambda: env_float(e, "EVENTQ_BACKOFF_JITTER", 0.2, maximum=1.0),
            "dead_letter_suffix": lambda: env_str(e, "EVENTQ_DEAD_LETTER_SUFFIX", ".dlt") or "",
            "dead_letter_topic": lambda: env_str(e, "EVENTQ_DEAD_LETTER_TOPIC"),
            "create_topics": lambda: _boolean(e, "EVENTQ_CREATE_TOPICS", True),
            "on_unknown_type": lambda: _choice(e, "EVENTQ_ON_UNKNOWN_TYPE", "dead_letter", ("dead_letter", "skip")),
            "auto_offset_reset": lambda: _choice(e, "EVENTQ_AUTO_OFFSET_RESET", "earliest", ("earliest", "latest")),
            "health_port": lambda: (
                None if env_str(e, "EVENTQ_HEALTH_PORT") is None
                else env_int(e, "EVENTQ_HEALTH_PORT", 0, maximum=65535)
            ),
            "health_host": lambda: env_str(e, "EVENTQ_HEALTH_HOST", "127.0.0.1") or "127.0.0.1",
            "pool_size": lambda: env_int(e, "EVENTQ_DB_POOL_SIZE", 4, minimum=2, maximum=1000),
            "workers": lambda: env_int(e, "EVENTQ_WORKERS", 1, minimum=1, maximum=64),
            **seconds,
        }, overrides)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ConsumerSettings)}
