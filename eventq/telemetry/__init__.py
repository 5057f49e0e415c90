"""Traces, metrics and log context: how eventq reports what it does.

The library only *uses* OpenTelemetry and structlog; it never configures them (the
CLI does, in :mod:`eventq.telemetry.setup`). Components take an optional
:class:`Telemetry` naming the providers to use; by default they use the global ones,
so an application that configured OpenTelemetry gets eventq's spans and metrics
without passing anything. With no SDK configured, tracing costs almost nothing:
eventq checks once per batch and skips building spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    """Which OpenTelemetry providers (and Prometheus registry) eventq reports to.

    ``None`` means the global one: ``opentelemetry.trace.get_tracer_provider()``,
    ``opentelemetry.metrics.get_meter_provider()`` and ``prometheus_client.REGISTRY``.
    """

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    prometheus_registry: CollectorRegistry | None = None


__all__ = ["Telemetry"]
