"""What `eventq.telemetry.setup` turns on from the OTEL_* variables, without touching the global providers.

OpenTelemetry's global tracer and meter providers can be set only once per process, so every
test that reaches `configure()` records the providers it would set instead of setting them.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanContext

from eventq.errors import ConfigError
from eventq.telemetry import setup
from eventq.telemetry.setup import DEFAULT_MAX_LINKS, TelemetrySettings, configure, span_file_exporter

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "EVENTQ_TRACE_FILE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads some variables from os.environ itself: start every test without them."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Recorded:
    """What `configure()` handed to OpenTelemetry instead of setting it globally."""

    tracer_providers: list[TracerProvider] = field(default_factory=list)
    meter_providers: list[MeterProvider] = field(default_factory=list)
    span_exporters: list[SpanExporter] = field(default_factory=list)
    trace_files: list[ConsoleSpanExporter] = field(default_factory=list)

    @property
    def tracer_provider(self) -> TracerProvider:
        assert len(self.tracer_providers) == 1
        return self.tracer_providers[0]

    @property
    def meter_provider(self) -> MeterProvider:
        assert len(self.meter_providers) == 1
        return self.meter_providers[0]

    @property
    def metric_readers(self) -> list[Any]:
        return list(self.meter_provider._metric_readers)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """Record the providers and exporters `configure()` builds; set no global provider."""
    rec = Recorded()

    class RecordingBatchSpanProcessor(BatchSpanProcessor):
        def __init__(self, span_exporter: SpanExporter) -> None:
            rec.span_exporters.append(span_exporter)
            super().__init__(span_exporter)

    def recording_span_file_exporter(path: str) -> SpanExporter:
        exporter = span_file_exporter(path)
        assert isinstance(exporter, ConsoleSpanExporter)
        rec.trace_files.append(exporter)
        return exporter

    monkeypatch.setattr("eventq.telemetry.setup.trace.set_tracer_provider", rec.tracer_providers.append)
    monkeypatch.setattr("eventq.telemetry.setup.metrics.set_meter_provider", rec.meter_providers.append)
    monkeypatch.setattr(setup, "BatchSpanProcessor", RecordingBatchSpanProcessor)
    monkeypatch.setattr(setup, "span_file_exporter", recording_span_file_exporter)
    yield rec
    # The exporter's shutdown leaves the trace file open (see the report); close it here so
    # no ResourceWarning fires later in another test.
    for exporter in rec.trace_files:
        exporter.out.close()


def without_entry_points(*names: str) -> tuple[Any, list[str]]:
    """An `entry_points` that finds none of `names`, and the list of names it was asked for."""
    asked: list[str] = []
    real = importlib.metadata.entry_points

    def fake(**selection: Any) -> Any:
        if "name" in selection:
            asked.append(selection["name"])
            if selection["name"] in names:
                return importlib.metadata.EntryPoints(())
        return real(**selection)

    return fake, asked


def links(count: int) -> list[Link]:
    return [Link(SpanContext(trace_id=n, span_id=n, is_remote=True)) for n in range(1, count + 1)]


# --- TelemetrySettings.from_env ------------------------------------------------------------


def test_nothing_set_asks_for_nothing() -> None:
    """With no variable set, no exporter, trace file or tracing is asked for."""
    settings = TelemetrySettings.from_env({})

    assert settings == TelemetrySettings()
    assert settings.traces_exporters == ()
    assert settings.metrics_exporters == ()
    assert settings.trace_file is None
    assert settings.disabled is False
    assert settings.tracing is False


def test_exporter_lists_are_split_trimmed_and_lowercased() -> None:
    """OTEL_*_EXPORTER are comma lists whose names are trimmed and compared case-insensitively."""
    settings = TelemetrySettings.from_env(
        {"OTEL_TRACES_EXPORTER": " OTLP , Console,", "OTEL_METRICS_EXPORTER": "Prometheus,otlp"}
    )

    assert settings.traces_exporters == ("otlp", "console")
    assert settings.metrics_exporters == ("prometheus", "otlp")
    assert settings.tracing is True


@pytest.mark.parametrize("raw", ["none", "NONE", " None ", "", " , ", "none,none"])
def test_none_or_empty_exporter_means_off(raw: str) -> None:
    """`none` (any case) or an empty list asks for no exporter, so tracing stays off."""
    settings = TelemetrySettings.from_env({"OTEL_TRACES_EXPORTER": raw, "OTEL_METRICS_EXPORTER": raw})

    assert settings.traces_exporters == ()
    assert settings.metrics_exporters == ()
    assert settings.tracing is False


def test_none_next_to_a_real_exporter_is_dropped() -> None:
    """`none` listed beside a real exporter is ignored and the real one is kept."""
    settings = TelemetrySettings.from_env({"OTEL_TRACES_EXPORTER": "none,console"})

    assert settings.traces_exporters == ("console",)


def test_trace_file_alone_turns_tracing_on() -> None:
    """EVENTQ_TRACE_FILE is read as the trace file and is enough to turn tracing on."""
    settings = TelemetrySettings.from_env({"EVENTQ_TRACE_FILE": "/var/tmp/spans.jsonl"})

    assert settings.trace_file == "/var/tmp/spans.jsonl"
    assert settings.traces_exporters == ()
    assert settings.tracing is True


def test_empty_trace_file_is_no_trace_file() -> None:
    """An empty EVENTQ_TRACE_FILE means no trace file."""
    assert TelemetrySettings.from_env({"EVENTQ_TRACE_FILE": ""}).trace_file is None


@pytest.mark.parametrize("raw", ["true", "TRUE", " True "])
def test_sdk_disabled_true_turns_everything_off(raw: str) -> None:
    """OTEL_SDK_DISABLED=true (any case) disables telemetry, so tracing is off even with exporters."""
    settings = TelemetrySettings.from_env(
        {"OTEL_SDK_DISABLED": raw, "OTEL_TRACES_EXPORTER": "console", "EVENTQ_TRACE_FILE": "/var/tmp/t.jsonl"}
    )

    assert settings.disabled is True
    assert settings.tracing is False


@pytest.mark.parametrize("raw", ["false", "1", "yes", ""])
def test_sdk_disabled_other_than_true_keeps_telemetry(raw: str) -> None:
    """Only the value `true` disables telemetry."""
    settings = TelemetrySettings.from_env({"OTEL_SDK_DISABLED": raw, "OTEL_TRACES_EXPORTER": "console"})

    assert settings.disabled is False
    assert settings.tracing is True


def test_overrides_win_and_none_overrides_are_ignored() -> None:
    """Keyword overrides replace what the environment says, except those given as None."""
    settings = TelemetrySettings.from_env(
        {"EVENTQ_TRACE_FILE": "/var/tmp/from-env.jsonl", "OTEL_TRACES_EXPORTER": "console"},
        service_name="orders-projector",
        prometheus=True,
        trace_file=None,
        traces_exporters=("otlp",),
    )

    assert settings.service_name == "orders-projector"
    assert settings.prometheus is True
    assert settings.trace_file == "/var/tmp/from-env.jsonl"
    assert settings.traces_exporters == ("otlp",)


def test_false_override_is_not_ignored() -> None:
    """An override of False is a value, not an absence: it replaces the environment's answer."""
    settings = TelemetrySettings.from_env({"OTEL_SDK_DISABLED": "true"}, disabled=False)

    assert settings.disabled is False


def test_without_a_mapping_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() with no mapping reads the process environment."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("EVENTQ_TRACE_FILE", "/var/tmp/spans.jsonl")

    settings = TelemetrySettings.from_env()

    assert settings.traces_exporters == ("console",)
    assert settings.trace_file == "/var/tmp/spans.jsonl"


# --- configure(): what it sets, and what it leaves alone ----------------------------------


def test_nothing_asked_sets_no_global_provider(recorded: Recorded) -> None:
    """With no exporter, trace file or Prometheus asked for, configure() sets neither provider."""
    shutdown = configure(TelemetrySettings.from_env({}), environ={})
    shutdown()

    assert recorded.tracer_providers == []
    assert recorded.meter_providers == []


def test_disabled_sets_no_global_provider_whatever_else_is_asked(recorded: Recorded, tmp_path: Path) -> None:
    """OTEL_SDK_DISABLED=true wins over exporters, a trace file and Prometheus: nothing is set or opened."""
    environ = {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "EVENTQ_TRACE_FILE": str(tmp_path / "spans.jsonl"),
    }

    shutdown = configure(TelemetrySettings.from_env(environ, prometheus=True), environ=environ)
    shutdown()

    assert recorded.tracer_providers == []
    assert recorded.meter_providers == []
    assert not (tmp_path / "spans.jsonl").exists()


def test_tracing_sets_a_tracer_provider_with_the_asked_exporter(recorded: Recorded) -> None:
    """OTEL_TRACES_EXPORTER=console sets one tracer provider exporting through a console exporter, and no meter."""
    environ = {"OTEL_TRACES_EXPORTER": "console"}

    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    shutdown()

    assert isinstance(recorded.tracer_provider, TracerProvider)
    assert [type(e) for e in recorded.span_exporters] == [ConsoleSpanExporter]
    assert recorded.meter_providers == []


def test_a_span_keeps_ten_thousand_links_by_default(recorded: Recorded) -> None:
    """Without OTEL_SPAN_LINK_COUNT_LIMIT a span keeps up to 10,000 links, not the SDK's 128."""
    environ = {"OTEL_TRACES_EXPORTER": "console"}
    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    try:
        span = recorded.tracer_provider.get_tracer("test").start_span("batch", links=links(300))
        assert isinstance(span, ReadableSpan)

        assert recorded.tracer_provider._span_limits.max_links == DEFAULT_MAX_LINKS == 10_000
        assert len(span.links) == 300
    finally:
        shutdown()


def test_link_count_limit_from_the_environment_wins(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SPAN_LINK_COUNT_LIMIT, when set, is the links-per-span limit instead of 10,000."""
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "42")
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SPAN_LINK_COUNT_LIMIT": "42"}
    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    try:
        span = recorded.tracer_provider.get_tracer("test").start_span("batch", links=links(300))
        assert isinstance(span, ReadableSpan)

        assert recorded.tracer_provider._span_limits.max_links == 42
        assert len(span.links) == 42
    finally:
        shutdown()


def test_tracer_provider_resource_names_the_service(recorded: Recorded) -> None:
    """The tracer provider's resource has service.name set to the name configure() was given."""
    environ = {"OTEL_TRACES_EXPORTER": "console"}

    shutdown = configure(TelemetrySettings.from_env(environ, service_name="orders-projector"), environ=environ)
    shutdown()

    assert recorded.tracer_provider.resource.attributes["service.name"] == "orders-projector"


def test_trace_file_receives_the_spans_of_the_configured_provider(recorded: Recorded, tmp_path: Path) -> None:
    """With EVENTQ_TRACE_FILE, a span ended on the configured provider is in the file once shut down."""
    path = tmp_path / "spans.jsonl"
    environ = {"EVENTQ_TRACE_FILE": str(path)}
    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)

    recorded.tracer_provider.get_tracer("test").start_span("consume orders").end()
    shutdown()

    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["consume orders"]


def test_exporters_and_trace_file_are_used_together(recorded: Recorded, tmp_path: Path) -> None:
    """Every listed exporter and the trace file each get a batch processor on the same provider."""
    environ = {"OTEL_TRACES_EXPORTER": "console", "EVENTQ_TRACE_FILE": str(tmp_path / "spans.jsonl")}

    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    shutdown()

    assert len(recorded.tracer_providers) == 1
    assert len(recorded.span_exporters) == 2
    assert recorded.span_exporters[1] is recorded.trace_files[0]


# --- configure(): exporters that are unknown or not installed -----------------------------


def test_unknown_traces_exporter_names_the_variable_and_the_valid_names(recorded: Recorded) -> None:
    """An unknown OTEL_TRACES_EXPORTER name is a ConfigError naming the variable and listing valid names."""
    environ = {"OTEL_TRACES_EXPORTER": "zipkin"}

    with pytest.raises(ConfigError) as raised:
        configure(TelemetrySettings.from_env(environ), environ=environ)

    message = str(raised.value)
    assert "OTEL_TRACES_EXPORTER" in message and "'zipkin'" in message
    assert "console" in message and "otlp" in message and "none" in message
    assert recorded.tracer_providers == []


def test_unknown_metrics_exporter_names_the_metrics_variable(recorded: Recorded) -> None:
    """An unknown OTEL_METRICS_EXPORTER name is a ConfigError naming that variable and the valid names."""
    environ = {"OTEL_METRICS_EXPORTER": "statsd"}

    with pytest.raises(ConfigError) as raised:
        configure(TelemetrySettings.from_env(environ), environ=environ)

    message = str(raised.value)
    assert "OTEL_METRICS_EXPORTER" in message and "'statsd'" in message
    assert "console" in message and "prometheus" in message
    assert recorded.meter_providers == []


def test_otlp_not_installed_says_to_install_the_extra(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    """otlp without the OTLP/HTTP exporter installed is a ConfigError saying `pip install 'eventq[otlp]'`."""
    fake, asked = without_entry_points("otlp_proto_http")
    monkeypatch.setattr(setup, "entry_points", fake)
    environ = {"OTEL_TRACES_EXPORTER": "otlp"}

    with pytest.raises(ConfigError) as raised:
        configure(TelemetrySettings.from_env(environ), environ=environ)

    assert "OTEL_TRACES_EXPORTER=otlp" in str(raised.value)
    assert "pip install 'eventq[otlp]'" in str(raised.value)
    assert asked == ["otlp_proto_http"]
    assert recorded.tracer_providers == []


def test_otlp_over_grpc_asks_for_the_grpc_package(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    """otlp with OTEL_EXPORTER_OTLP_PROTOCOL=grpc looks for the gRPC exporter and names its package when absent."""
    fake, asked = without_entry_points("otlp_proto_grpc")
    monkeypatch.setattr(setup, "entry_points", fake)
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": " GRPC "}

    with pytest.raises(ConfigError) as raised:
        configure(TelemetrySettings.from_env(environ), environ=environ)

    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in str(raised.value)
    assert asked == ["otlp_proto_grpc"]


def test_otlp_installed_builds_the_otlp_http_span_exporter(recorded: Recorded) -> None:
    """With the OTLP/HTTP exporter installed, otlp configures tracing through an OTLPSpanExporter."""
    environ = {"OTEL_TRACES_EXPORTER": "otlp"}

    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    shutdown()

    assert [type(e) for e in recorded.span_exporters] == [OTLPSpanExporter]


# --- configure(): metrics -----------------------------------------------------------------


def test_prometheus_adds_a_prometheus_reader_to_the_meter_provider(recorded: Recorded) -> None:
    """prometheus=True sets a meter provider whose only reader is a PrometheusMetricReader, and no tracer."""
    shutdown = configure(TelemetrySettings.from_env({}, prometheus=True, service_name="orders"), environ={})
    readers = recorded.metric_readers
    try:
        assert [type(r) for r in readers] == [PrometheusMetricReader]
        assert recorded.meter_provider._sdk_config.resource.attributes["service.name"] == "orders"
        assert recorded.tracer_providers == []
    finally:
        shutdown()
        for reader in readers:  # shutdown unregisters it; make sure, as REGISTRY is process-wide
            if reader._collector in prometheus_client.REGISTRY._collector_to_names:
                prometheus_client.REGISTRY.unregister(reader._collector)

    assert readers[0]._collector not in prometheus_client.REGISTRY._collector_to_names


def test_prometheus_in_metrics_exporters_is_served_by_one_prometheus_reader(recorded: Recorded) -> None:
    """OTEL_METRICS_EXPORTER=prometheus together with prometheus=True still adds a single Prometheus reader."""
    environ = {"OTEL_METRICS_EXPORTER": "prometheus"}
    shutdown = configure(TelemetrySettings.from_env(environ, prometheus=True), environ=environ)
    readers = recorded.metric_readers
    try:
        assert [type(r) for r in readers] == [PrometheusMetricReader]
    finally:
        shutdown()
        for reader in readers:
            if reader._collector in prometheus_client.REGISTRY._collector_to_names:
                prometheus_client.REGISTRY.unregister(reader._collector)


def test_console_metrics_exporter_gets_a_periodic_reader(recorded: Recorded) -> None:
    """OTEL_METRICS_EXPORTER=console sets a meter provider exporting periodically to the console."""
    environ = {"OTEL_METRICS_EXPORTER": "console"}

    shutdown = configure(TelemetrySettings.from_env(environ), environ=environ)
    readers = recorded.metric_readers
    shutdown()

    assert [type(r) for r in readers] == [PeriodicExportingMetricReader]
    assert isinstance(readers[0]._exporter, ConsoleMetricExporter)


# --- span_file_exporter -------------------------------------------------------------------


def test_span_file_gets_one_json_object_per_span(tmp_path: Path) -> None:
    """Each ended span is written as one JSON line with its name, context and parent id."""
    path = tmp_path / "spans.jsonl"
    exporter = span_file_exporter(str(path))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("consume orders") as parent:
            with tracer.start_as_current_span("handle order.paid") as child:
                pass
    finally:
        provider.shutdown()
        exporter.out.close()  # type: ignore[attr-defined]

    lines = path.read_text(encoding="utf-8").splitlines()
    spans = [json.loads(line) for line in lines]
    assert [s["name"] for s in spans] == ["handle order.paid", "consume orders"]
    by_name = {s["name"]: s for s in spans}
    parent_ids = parent.get_span_context()
    assert by_name["consume orders"]["parent_id"] is None
    assert by_name["consume orders"]["context"]["span_id"] == f"0x{parent_ids.span_id:016x}"
    assert by_name["handle order.paid"]["parent_id"] == f"0x{parent_ids.span_id:016x}"
    assert by_name["handle order.paid"]["context"]["trace_id"] == f"0x{parent_ids.trace_id:032x}"
    assert by_name["handle order.paid"]["context"]["span_id"] == f"0x{child.get_span_context().span_id:016x}"


def test_span_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    """A second exporter on the same file adds its spans after the ones already there."""
    path = tmp_path / "spans.jsonl"
    for name in ("first run", "second run"):
        exporter = span_file_exporter(str(path))
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.get_tracer("test").start_span(name).end()
        provider.shutdown()
        exporter.out.close()  # type: ignore[attr-defined]

    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["first run", "second run"]


def test_trace_file_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    """A trace file path whose parent is a regular file is a ConfigError naming the path and EVENTQ_TRACE_FILE."""
    (tmp_path / "not-a-dir").write_text("x")
    path = str(tmp_path / "not-a-dir" / "spans.jsonl")

    with pytest.raises(ConfigError) as raised:
        span_file_exporter(path)

    assert repr(path) in str(raised.value)
    assert "EVENTQ_TRACE_FILE" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


def test_trace_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    """A trace file path that is a directory is a ConfigError naming the path and EVENTQ_TRACE_FILE."""
    with pytest.raises(ConfigError) as raised:
        span_file_exporter(str(tmp_path))

    assert repr(str(tmp_path)) in str(raised.value)
    assert "EVENTQ_TRACE_FILE" in str(raised.value)


def test_unwritable_trace_file_fails_configure_before_any_provider_is_set(recorded: Recorded, tmp_path: Path) -> None:
    """configure() with an unwritable EVENTQ_TRACE_FILE raises ConfigError and sets no tracer provider."""
    environ = {"EVENTQ_TRACE_FILE": str(tmp_path)}

    with pytest.raises(ConfigError, match="EVENTQ_TRACE_FILE"):
        configure(TelemetrySettings.from_env(environ), environ=environ)

    assert recorded.tracer_providers == []


# --- the resource -------------------------------------------------------------------------


def test_resource_service_name_defaults_to_the_given_name() -> None:
    """Without OTEL_SERVICE_NAME or service.name in OTEL_RESOURCE_ATTRIBUTES, service.name is the given name."""
    resource = setup._resource("orders-projector")

    assert resource.attributes["service.name"] == "orders-projector"


def test_otel_service_name_wins_over_the_given_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SERVICE_NAME names the service instead of the name eventq passes."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")

    resource = setup._resource("orders-projector")

    assert resource.attributes["service.name"] == "billing"


def test_service_name_resource_attribute_wins_over_the_given_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.name in OTEL_RESOURCE_ATTRIBUTES names the service; other attributes are kept too."""
    attributes = "deployment.environment=staging,service.name=billing"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", attributes)

    resource = setup._resource("orders-projector")

    assert resource.attributes["service.name"] == "billing"
    assert resource.attributes["deployment.environment"] == "staging"


def test_other_resource_attributes_keep_the_given_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_RESOURCE_ATTRIBUTES without service.name adds its attributes and keeps the given service name."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")

    resource = setup._resource("orders-projector")

    assert resource.attributes["service.name"] == "orders-projector"
    assert resource.attributes["deployment.environment"] == "staging"
