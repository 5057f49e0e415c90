"""eventq.telemetry.metrics: what a slice and the lag record, on a real SDK meter provider."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from eventq.telemetry.metrics import ConsumerMetrics


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
        if metric.name == name for point in metric.data.data_points
    ]


def test_a_slice_counts_only_the_records_it_finished() -> None:
    """An interrupted slice counts its finished prefix as consumed (the rest is fetched and counted again)."""
    reader = InMemoryMetricReader()
    metrics = ConsumerMetrics(MeterProvider(metric_readers=[reader]), "billing")

    metrics.slice_done("orders", 0, 500, 120, 3, 2, ["exhausted", "rejected", "exhausted"], 0.5)
    metrics.slice_done("orders", 0, 380, 380, 0, 0, [], 0.2)

    assert sum(p.value for p in points(reader, "messaging.client.consumed.messages")) == 500
    assert sum(p.value for p in points(reader, "eventq.consumer.duplicates")) == 3
    assert sum(p.value for p in points(reader, "eventq.consumer.retries")) == 2
    dead = {p.attributes["eventq.dead_letter.reason"]: p.value for p in points(reader, "eventq.consumer.dead_lettered")}
    assert dead == {"exhausted": 2, "rejected": 1}
    assert [p.count for p in points(reader, "eventq.consumer.batch.size")] == [2]


def test_every_daemon_on_one_meter_provider_reports_its_own_lag() -> None:
    """Two consumers (groups) on one meter provider: each one's lag is reported, per partition."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first, second = ConsumerMetrics(provider, "billing"), ConsumerMetrics(provider, "shipping")

    first.lag([("orders", 0, 5), ("orders", 1, 0)])
    second.lag([("orders", 0, 7)])

    lags = {
        (p.attributes["messaging.consumer.group.name"], p.attributes["messaging.destination.partition.id"]): p.value
        for p in points(reader, "eventq.consumer.lag")
    }
    assert lags == {("billing", "0"): 5, ("billing", "1"): 0, ("shipping", "0"): 7}
