"""OpenTelemetry for the CLI's processes, from the standard ``OTEL_*`` variables.

Only the CLI calls :func:`configure` (it sets OpenTelemetry's global providers);
the library just uses whatever providers are set. Tracing is on only when asked for,
so an unconfigured daemon pays nothing for it:

=============================  ===================================================
``OTEL_TRACES_EXPORTER``       ``otlp`` (needs ``pip install 'eventq[otlp]'``),
                               ``console``, ``none``, or any installed exporter's
                               entry-point name; several separated by commas.
                               Unset: no tracing (unlike the spec's ``otlp``).
``EVENTQ_TRACE_FILE``          also write every span as a JSON line to this file
                               (read by ``eventq trace EVENT_ID``)
``OTEL_METRICS_EXPORTER``      ``otlp``, ``console``, ``none``; ``prometheus``: the
                               daemon's ``/metrics`` (served whenever it has a
                               health port)
``OTEL_SDK_DISABLED``          ``true``: no traces, no metrics
``OTEL_SERVICE_NAME``,         the service's name and resource attributes (default
``OTEL_RESOURCE_ATTRIBUTES``   ``service.name``: the consumer group, or ``eventq``)
``OTEL_TRACES_SAMPLER`` …      sampler, batch processor, OTLP endpoint and headers:
                               read by the SDK and exporter themselves
``OTEL_SPAN_LINK_COUNT_LIMIT`` links per span; default here 10,000 (not 128), so a
                               batch span can link every event of a large batch
=============================  ===================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import IO, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from eventq.errors import ConfigError

DEFAULT_MAX_LINKS = 10_000
_OFF = {"", "none"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    """What the CLI turns on; see the module docstring for the variables."""

    service_name: str = "eventq"
    traces_exporters: tuple[str, ...] = ()
    metrics_exporters: tuple[str, ...] = ()
    trace_file: str | None = None
    prometheus: bool = False  # a Prometheus reader for the health endpoint's /metrics
    disabled: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> TelemetrySettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "traces_exporters": _names(env.get("OTEL_TRACES_EXPORTER", "")),
            "metrics_exporters": _names(env.get("OTEL_METRICS_EXPORTER", "")),
            "trace_file": env.get("EVENTQ_TRACE_FILE") or None,
            "disabled": env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def tracing(self) -> bool:
        return not self.disabled and bool(self.traces_exporters or self.trace_file)


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    return () if all(n in _OFF for n in names) else tuple(n for n in names if n not in _OFF)


def configure(settings: TelemetrySettings, *, environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Set the global tracer and meter providers as asked; return a function that flushes and shuts them down.

    Raises :class:`ConfigError` naming the variable for an unknown or uninstalled exporter.
    """
    env = os.environ if environ is None else environ
    if settings.disabled:
        return lambda: None
    # Everything that can fail is built before any global is set.
    max_links = _link_limit(env)
    span_exporters: list[SpanExporter] = []
    if settings.tracing:
        span_exporters = [_exporter("OTEL_TRACES_EXPORTER", "opentelemetry_traces_exporter", name, env)
                          for name in settings.traces_exporters]
    metric_exporters = [_exporter("OTEL_METRICS_EXPORTER", "opentelemetry_metrics_exporter", name, env)
                        for name in settings.metrics_exporters if name != "prometheus"]
    if settings.tracing and settings.trace_file:
        span_exporters.append(span_file_exporter(settings.trace_file))
    resource = _resource(settings.service_name)
    shutdowns: list[Callable[[], Any]] = []
    if settings.tracing:
        tracer_provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=max_links))
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        shutdowns.append(tracer_provider.shutdown)
    readers: list[MetricReader] = [PeriodicExportingMetricReader(exporter) for exporter in metric_exporters]
    if settings.prometheus or "prometheus" in settings.metrics_exporters:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    if readers:
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
        shutdowns.append(meter_provider.shutdown)

    def shutdown() -> None:
        for step in reversed(shutdowns):
            step()

    return shutdown


class _SpanFile(ConsoleSpanExporter):
    """The console exporter writing to a file it owns (and closes at shutdown)."""

    def shutdown(self) -> None:
        self.out.close()


def span_file_exporter(path: str) -> SpanExporter:
    """An exporter appending each span as one JSON line (``ReadableSpan.to_json``) to ``path``."""
    try:
        out: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the exporter's shutdown)
    except OSError as exc:
        raise ConfigError(f"cannot open the trace file {path!r} ({exc.strerror}); set EVENTQ_TRACE_FILE to a "
                          "writable path") from exc

    def line(span: ReadableSpan) -> str:
        return str(span.to_json(indent=None)) + "\n"

    return _SpanFile(out=out, formatter=line)


def _link_limit(env: Mapping[str, str]) -> int:
    raw = env.get("OTEL_SPAN_LINK_COUNT_LIMIT", "").strip()
    if not raw:
        return DEFAULT_MAX_LINKS
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"OTEL_SPAN_LINK_COUNT_LIMIT={raw!r} is not a whole number >= 0, e.g. 1000")
    return limit


def _resource(service_name: str) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named ``service_name`` if they name none."""
    detected = Resource.create({})
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return detected.merge(Resource({"service.name": service_name}))
    return detected


def _exporter(variable: str, group: str, name: str, env: Mapping[str, str]) -> Any:
    wanted = name
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
        wanted = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    found = entry_points(group=group, name=wanted)
    if not found:
        if name == "otlp":
            package = "opentelemetry-exporter-otlp-proto-grpc" if wanted == "otlp_proto_grpc" else "'eventq[otlp]'"
            raise ConfigError(f"{variable}=otlp needs the OTLP exporter, which is not installed; pip install {package}")
        installed = sorted({e.name for e in entry_points(group=group)} | {"otlp", "none"})
        raise ConfigError(f"{variable}: unknown exporter {name!r}; use one of {', '.join(installed)}")
    return next(iter(found)).load()()
