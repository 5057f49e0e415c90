"""Producer settings: a frozen dataclass with ``from_env()``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventq.config import KafkaSettings, check_seconds, env_float, env_int, env_str, read_env
from eventq.errors import ConfigError
from eventq.schemas.envelope import DEFAULT_MAX_EVENT_BYTES

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
        check_seconds(self.delivery_timeout_s, "delivery_timeout_s", "EVENTQ_DELIVERY_TIMEOUT_S")
        if self.delivery_timeout_s <= 0:
            raise ConfigError("delivery_timeout_s must be positive (EVENTQ_DELIVERY_TIMEOUT_S)")
        if not 0 <= self.linger_ms <= MAX_LINGER_MS:
            raise ConfigError(f"linger_ms must be from 0 to {MAX_LINGER_MS} (EVENTQ_LINGER_MS)")
        if self.max_event_bytes < 1024:
            raise ConfigError("max_event_bytes must be at least 1024 (EVENTQ_MAX_EVENT_BYTES)")
        if self.max_batch_bytes < 1024:
            # A batch always takes its first record whatever its size, so this only
            # bounds how many records share one request.
            raise ConfigError("max_batch_bytes must be at least 1024 (EVENTQ_MAX_BATCH_BYTES)")
        if self.compression not in COMPRESSION:
            raise ConfigError(
                f"compression {self.compression!r} (EVENTQ_COMPRESSION) is unknown; "
                "use one of gzip, snappy, lz4, zstd"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ProducerSettings:
        """Read ``EVENTQ_*`` variables (see README, Configuration); ``overrides`` win and are not read."""
        e = os.environ if env is None else env
        return read_env(cls, {
            "kafka": lambda: KafkaSettings.from_env(e),
            "default_topic": lambda: env_str(e, "EVENTQ_TOPIC"),
            "schemas": lambda: tuple(s.strip() for s in (env_str(e, "EVENTQ_SCHEMAS") or "").split(",") if s.strip()),
            "delivery_timeout_s": lambda: env_float(e, "EVENTQ_DELIVERY_TIMEOUT_S", 30.0, minimum=0.001),
            "linger_ms": lambda: env_int(e, "EVENTQ_LINGER_MS", 5, maximum=MAX_LINGER_MS),
            "max_batch_bytes": lambda: env_int(e, "EVENTQ_MAX_BATCH_BYTES", 512 * 1024, minimum=1024),
            "max_event_bytes": lambda: env_int(e, "EVENTQ_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES, minimum=1024),
            "compression": lambda: _compression(env_str(e, "EVENTQ_COMPRESSION")),
        }, overrides)


def _compression(value: str | None) -> str | None:
    if value is not None and value.lower() not in COMPRESSION:
        raise ConfigError(f"EVENTQ_COMPRESSION={value!r} is unknown; use one of gzip, snappy, lz4, zstd (or unset)")
    return None if value is None else value.lower()
