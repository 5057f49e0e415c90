"""Producer settings: a frozen dataclass with ``from_env()``, its variables declared in :data:`PRODUCER`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eventq.config import KafkaSettings
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES
from eventq.settings_table import Setting, table

COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")
MAX_LINGER_MS = 60_000  # a batch held longer than a minute is a mistake, not tuning


@dataclass(frozen=True, kw_only=True)
class ProducerSettings:
    """How a :class:`~eventq.producers.Producer` connects and batches.

    Idempotence and ``acks=all`` are not settings: eventq always uses them, so an
    acknowledged event is on every in-sync replica and retries never duplicate or
    reorder it within a partition.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    default_topic: str | None = None
    schemas: tuple[str, ...] = ()
    delivery_timeout_s: float = 30.0
    linger_ms: int = 5
    max_batch_bytes: int = 512 * 1024
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    compression: str | None = None

    def __post_init__(self) -> None:
        PRODUCER.check(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ProducerSettings:
        """Read the variables of :data:`PRODUCER` and :data:`~eventq.config.KAFKA` (README, Configuration);
        ``overrides`` win and are not read."""
        return PRODUCER.read(env, overrides, kafka=KafkaSettings.from_env)

    @staticmethod
    def nested(overrides: Mapping[str, Any]) -> Callable[[Mapping[str, str]], ProducerSettings]:
        """How settings that hold a ``producer`` (the daemon's, the relay's) read it: from the environment,
        with the holder's own ``kafka`` override if one was given."""

        def read(env: Mapping[str, str]) -> ProducerSettings:
            return ProducerSettings.from_env(env, kafka=overrides.get("kafka") or KafkaSettings.from_env(env))

        return read


PRODUCER = table(
    ProducerSettings,
    Setting("default_topic", "EVENTQ_TOPIC", help="Topic to publish to"),
    Setting("schemas", "EVENTQ_SCHEMAS", "csv", help="Directory or package of <type>.json schemas"),
    Setting("delivery_timeout_s", "EVENTQ_DELIVERY_TIMEOUT_S", "seconds", minimum=0.001,
            help="longest wait for an acknowledgement"),
    Setting("linger_ms", "EVENTQ_LINGER_MS", "int", minimum=0, maximum=MAX_LINGER_MS,
            help="how long the client waits to fill a batch"),
    # A batch always takes its first record whatever its size, so the minimum only
    # bounds how many records share one request.
    Setting("max_batch_bytes", "EVENTQ_MAX_BATCH_BYTES", "int", minimum=1024, help="record batch size per partition"),
    Setting("max_event_bytes", "EVENTQ_MAX_EVENT_BYTES", "int", minimum=1024, help="largest encoded event accepted"),
    Setting("compression", "EVENTQ_COMPRESSION", "choice", choices=tuple(c for c in COMPRESSION if c),
            help="compression codec", default_text="none"),
)
"""The producer variables, one record per field of :class:`ProducerSettings` but ``kafka``."""
