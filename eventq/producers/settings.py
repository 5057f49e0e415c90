"""Producer settings: a frozen dataclass with ``from_env()``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from eventq.config import KafkaSettings, env_float, env_int, env_str
from eventq.errors import ConfigError
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES

COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")


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
        if self.delivery_timeout_s <= 0:
            raise ConfigError("delivery_timeout_s must be positive (EVENTQ_DELIVERY_TIMEOUT_S)")
        if self.linger_ms < 0:
            raise ConfigError("linger_ms must be 0 or more (EVENTQ_LINGER_MS)")
        if self.max_event_bytes < 1024:
            raise ConfigError("max_event_bytes must be at least 1024 (EVENTQ_MAX_EVENT_BYTES)")
        if self.max_batch_bytes < 1024:
            # A batch always takes its first record whatever its size, so this only
            # bounds how many records share one request.
            raise ConfigError("max_batch_bytes must be at least 1024 (EVENTQ_MAX_BATCH_BYTES)")
        if self.compression not in COMPRESSION:
            raise ConfigError(
                f"compression {self.compression!r} is unknown; use one of gzip, snappy, lz4, zstd"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProducerSettings:
        """Read ``EVENTQ_*`` variables (see README, Configuration)."""
        e = os.environ if env is None else env
        schemas = env_str(e, "EVENTQ_SCHEMAS")
        return cls(
            kafka=KafkaSettings.from_env(e),
            default_topic=env_str(e, "EVENTQ_TOPIC"),
            schemas=tuple(s for s in (schemas or "").split(",") if s),
            delivery_timeout_s=env_float(e, "EVENTQ_DELIVERY_TIMEOUT_S", 30.0),
            linger_ms=env_int(e, "EVENTQ_LINGER_MS", 5),
            max_batch_bytes=env_int(e, "EVENTQ_MAX_BATCH_BYTES", 512 * 1024),
            max_event_bytes=env_int(e, "EVENTQ_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES),
            compression=env_str(e, "EVENTQ_COMPRESSION"),
        )
