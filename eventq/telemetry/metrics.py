"""The metrics eventq records (OpenTelemetry; scraped by Prometheus on the health port, or OTLP).

=====================================  =========  =====================================
instrument                             unit       attributes
=====================================  =========  =====================================
``messaging.client.sent.messages``     message    destination, ``error.type`` if failed
``messaging.client.operation.duration`` s         destination (one per send of a batch)
``messaging.client.consumed.messages`` message    destination, partition, group
``messaging.process.duration``         s          destination, partition, group (a slice)
``eventq.consumer.batch.size``         message    destination, group (records per slice)
``eventq.consumer.duplicates``         message    destination, group (skipped: already done)
``eventq.consumer.retries``            {retry}    destination, group
``eventq.consumer.dead_lettered``      message    destination, group, ``eventq.dead_letter.reason``
``eventq.consumer.lag``                message    destination, partition, group (gauge)
=====================================  =========  =====================================

Everything is recorded per publish call or per partition slice, never per event, so
metrics cost the same whether a batch holds 1 or 500 events. Without an SDK meter
provider the instruments are OpenTelemetry's no-ops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from eventq.telemetry.tracing import DEAD_LETTER_REASON, DESTINATION, ERROR_TYPE, GROUP, PARTITION, SYSTEM
from eventq.version import __version__

# Seconds: from 1 ms (a no-op batch) to a minute (a slow, retrying one).
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_SIZE_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]

# (topic, partition, lag) for each assigned partition; called when metrics are collected.
LagReader = Callable[[], Iterable[tuple[str, int, int]]]


def _meter(provider: MeterProvider | None) -> metrics.Meter:
    return (provider or metrics.get_meter_provider()).get_meter("eventq", __version__)


class ProducerMetrics:
    """Counts sent events and times each send."""

    __slots__ = ("_sent", "_duration")

    def __init__(self, provider: MeterProvider | None = None) -> None:
        meter = _meter(provider)
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Events sent (acknowledged or failed)."
        )
        self._duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s", description="Time to publish a batch of events.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def sent(self, topic: str, errors: Iterable[BaseException], count: int, seconds: float) -> None:
        attributes: dict[str, Any] = {SYSTEM: "kafka", DESTINATION: topic, "messaging.operation.name": "send"}
        failed = Counter(type(error).__qualname__ for error in errors)
        ok = count - sum(failed.values())
        if ok:
            self._sent.add(ok, attributes)
        for error_type, n in failed.items():
            self._sent.add(n, {**attributes, ERROR_TYPE: error_type})
        self._duration.record(seconds, attributes)


class ConsumerMetrics:
    """What a consumer daemon did, per partition slice, plus its lag."""

    __slots__ = ("_group", "_consumed", "_duration", "_size", "_duplicates", "_retries", "_dead", "_lag", "_reader")

    def __init__(self, provider: MeterProvider | None, group: str) -> None:
        meter = _meter(provider)
        self._group = group
        self._reader: LagReader | None = None
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Records fetched and processed."
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Time to process one partition's slice of a batch.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._size = meter.create_histogram(
            "eventq.consumer.batch.size", unit="{message}", description="Records per partition slice.",
            explicit_bucket_boundaries_advisory=_SIZE_BUCKETS,
        )
        self._duplicates = meter.create_counter(
            "eventq.consumer.duplicates", unit="{message}",
            description="Events skipped: the group already finished them."
        )
        self._retries = meter.create_counter(
            "eventq.consumer.retries", unit="{retry}", description="Handler attempts that failed and were retried."
        )
        self._dead = meter.create_counter(
            "eventq.consumer.dead_lettered", unit="{message}", description="Records sent to a dead-letter topic."
        )
        self._lag = meter.create_observable_gauge(
            "eventq.consumer.lag", unit="{message}", callbacks=[self._observe_lag],
            description="Records after the last committed offset, per assigned partition.",
        )

    def read_lag_with(self, reader: LagReader | None) -> None:
        """Set (or clear) where the lag gauge reads from (the running daemon)."""
        self._reader = reader

    def slice_done(
        self, topic: str, partition: int, records: int, duplicates: int, retries: int,
        dead_letter_reasons: Iterable[str], seconds: float,
    ) -> None:
        group = self._group
        attributes = {SYSTEM: "kafka", DESTINATION: topic, GROUP: group}
        with_partition = {**attributes, PARTITION: str(partition)}
        self._consumed.add(records, with_partition)
        self._duration.record(seconds, with_partition)
        self._size.record(records, attributes)
        if duplicates:
            self._duplicates.add(duplicates, attributes)
        if retries:
            self._retries.add(retries, attributes)
        for reason, n in Counter(dead_letter_reasons).items():
            self._dead.add(n, {**attributes, DEAD_LETTER_REASON: reason})

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        reader = self._reader
        if reader is None:
            return []
        group = self._group
        return [
            Observation(lag, {SYSTEM: "kafka", DESTINATION: topic, PARTITION: str(partition), GROUP: group})
            for topic, partition, lag in reader()
        ]
