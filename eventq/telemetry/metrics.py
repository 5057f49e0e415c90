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
``eventq.outbox.relayed``              message    destination (acknowledged by the broker)
``eventq.outbox.relay_failed``         message    destination, ``error.type`` (kept, retried)
``eventq.outbox.parked``               message    destination (set aside: cannot be sent)
``eventq.outbox.pending``              message    the whole outbox (gauge, every 5 s)
``eventq.outbox.oldest_age``           s          the whole outbox (gauge, every 5 s)
=====================================  =========  =====================================

The lag is set once a second by the running daemon: the partition's last stable offset
(what a ``read_committed`` reader can see, as of the last fetch) minus the last offset
the daemon committed (before its first commit: the first offset it fetched). A
transaction marker after the last record (``eventq dlq replay`` writes in
transactions) counts as one until the next record arrives, and a paused (busy)
partition's end is as old as its last fetch.

Everything is recorded per publish call or per partition slice, never per event, so
metrics cost the same whether a batch holds 1 or 500 events. Without an SDK meter
provider the instruments are OpenTelemetry's no-ops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from eventq.telemetry.tracing import (
    DEAD_LETTER_REASON,
    DESTINATION,
    ERROR_TYPE,
    GROUP,
    OPERATION_NAME,
    PARTITION,
    SYSTEM,
)
from eventq.version import __version__

# Seconds: from 1 ms (a no-op batch) to a minute (a slow, retrying one).
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_SIZE_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]


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
        attributes: dict[str, Any] = {SYSTEM: "kafka", DESTINATION: topic, OPERATION_NAME: "send"}
        failed = Counter(type(error).__qualname__ for error in errors)
        ok = count - sum(failed.values())
        if ok:
            self._sent.add(ok, attributes)
        for error_type, n in failed.items():
            self._sent.add(n, {**attributes, ERROR_TYPE: error_type})
        self._duration.record(seconds, attributes)


class ConsumerMetrics:
    """What a consumer daemon did, per partition slice, plus its lag."""

    __slots__ = ("_group", "_consumed", "_duration", "_size", "_duplicates", "_retries", "_dead", "_lag")

    def __init__(self, provider: MeterProvider | None, group: str) -> None:
        meter = _meter(provider)
        self._group = group
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
        self._lag = meter.create_gauge(
            "eventq.consumer.lag", unit="{message}",
            description="Records after the last committed offset, per assigned partition.",
        )

    def lag(self, partitions: Iterable[tuple[str, int, int]]) -> None:
        """Set the lag gauge: (topic, partition, records after the last commit) per assigned partition."""
        group = self._group
        for topic, partition, lag in partitions:
            self._lag.set(lag, {SYSTEM: "kafka", DESTINATION: topic, PARTITION: str(partition), GROUP: group})

    def slice_done(
        self, topic: str, partition: int, records: int, finished: int, duplicates: int, retries: int,
        dead_letter_reasons: Iterable[str], seconds: float,
    ) -> None:
        """One slice: ``records`` fetched, the first ``finished`` of them done (the rest is fetched again)."""
        group = self._group
        attributes = {SYSTEM: "kafka", DESTINATION: topic, GROUP: group}
        with_partition = {**attributes, PARTITION: str(partition)}
        if finished:
            self._consumed.add(finished, with_partition)
        self._duration.record(seconds, with_partition)
        self._size.record(records, attributes)
        if duplicates:
            self._duplicates.add(duplicates, attributes)
        if retries:
            self._retries.add(retries, attributes)
        for reason, n in Counter(dead_letter_reasons).items():
            self._dead.add(n, {**attributes, DEAD_LETTER_REASON: reason})


class RelayMetrics:
    """What an outbox relay sent (per topic), and what waits in the whole outbox (refreshed every few seconds)."""

    __slots__ = ("_relayed", "_failed", "_parked", "_pending", "_oldest")

    def __init__(self, provider: MeterProvider | None = None) -> None:
        meter = _meter(provider)
        self._relayed = meter.create_counter(
            "eventq.outbox.relayed", unit="{message}", description="Outbox events the broker acknowledged."
        )
        self._failed = meter.create_counter(
            "eventq.outbox.relay_failed", unit="{message}", description="Outbox events a send failed (kept, retried)."
        )
        self._parked = meter.create_counter(
            "eventq.outbox.parked", unit="{message}",
            description="Outbox events set aside: they cannot be sent (too large for the topic, unreadable).",
        )
        self._pending = meter.create_gauge(
            "eventq.outbox.pending", unit="{message}", description="Committed outbox events not yet published."
        )
        self._oldest = meter.create_gauge(
            "eventq.outbox.oldest_age", unit="s", description="Age of the oldest pending outbox event."
        )

    def relayed(self, topic: str, count: int) -> None:
        if count:
            self._relayed.add(count, {SYSTEM: "kafka", DESTINATION: topic})

    def failed(self, topic: str, error_type: str, count: int) -> None:
        if count:
            self._failed.add(count, {SYSTEM: "kafka", DESTINATION: topic, ERROR_TYPE: error_type})

    def parked(self, topic: str, count: int) -> None:
        if count:
            self._parked.add(count, {SYSTEM: "kafka", DESTINATION: topic})

    def backlog(self, pending: int, oldest_s: float) -> None:
        """Set the gauges for the whole outbox (``eventq outbox status`` has them per topic)."""
        self._pending.set(pending, {SYSTEM: "kafka"})
        self._oldest.set(oldest_s, {SYSTEM: "kafka"})
