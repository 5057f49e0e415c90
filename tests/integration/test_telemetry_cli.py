"""The CLI's telemetry from the environment: a span file, /metrics, and OTLP export, as separate processes."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from eventq.config import KafkaSettings
from tests.conftest import TopicFactory, free_ports
from tests.integration.consumer_kit import order, publish, rows

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EVENTQ = [sys.executable, "-m", "eventq.cli"]


async def test_eventq_consume_serves_metrics_and_writes_spans_configured_by_the_environment(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """EVENTQ_TRACE_FILE and --health-port: spans of every event go to the file, /metrics counts them."""
    topic = await new_topic(partitions=2)
    events = [order(n) for n in range(50)]
    await publish(kafka_settings, topic, events)
    spans, [port] = tmp_path / "spans.jsonl", free_ports(1)
    env = {
        **os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "EVENTQ_DATABASE_URL": database,
        "EVENTQ_TOPICS": topic, "EVENTQ_SESSION_TIMEOUT_S": "6", "EVENTQ_TRACE_FILE": str(spans),
        "OTEL_SERVICE_NAME": "billing-test",
    }
    daemon = await asyncio.create_subprocess_exec(
        *EVENTQ, "consume", "tests.integration.sample_app:app", "--group", "cli-otel", "--health-port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            while len(await rows(database, "cli-otel")) < 50:
                await asyncio.sleep(0.2)
            text = ""
            while len(lags := _lag_lines(text)) != 2 or any(not line.endswith(" 0.0") for line in lags):
                text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
                await asyncio.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(daemon.communicate(), 60)
    assert daemon.returncode == 0, err.decode()[-3000:]

    consumed = [line for line in text.splitlines() if line.startswith("messaging_client_consumed_messages_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in consumed) == 50
    assert 'service_name="billing-test"' in text  # target_info carries the resource
    assert "process_cpu_seconds_total" in text  # prometheus_client's own process metrics too
    written = [json.loads(line) for line in spans.read_text().splitlines()]
    handles = [s for s in written if s["name"] == "handle demo.order.created.v1"]
    assert sorted(s["attributes"]["messaging.message.id"] for s in handles) == sorted(e.id for e in events)
    assert {s["resource"]["attributes"]["service.name"] for s in written} == {"billing-test"}

    shown = await asyncio.create_subprocess_exec(
        *EVENTQ, "trace", events[7].id, "--file", str(spans), env=env, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(shown.communicate(), 30)
    assert shown.returncode == 0
    assert "◆ handle demo.order.created.v1" in out.decode() and "outcome=handled" in out.decode()


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector's one route, keeping what it receives."""

    received: list[ExportTraceServiceRequest] = []
    metrics: list[ExportMetricsServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.received.append(request)
        elif self.path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            self.metrics.append(metrics)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    _Collector.received = []
    _Collector.metrics = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Collector.received
    finally:
        server.shutdown()
        server.server_close()


async def test_otlp_exporters_send_the_publish_span_and_metrics_to_a_collector(
    kafka_settings: KafkaSettings, new_topic: TopicFactory, collector: tuple[str, list[ExportTraceServiceRequest]]
) -> None:
    """OTEL_TRACES/METRICS_EXPORTER=otlp: `eventq publish` exports its send span and sent count over OTLP/HTTP."""
    topic = await new_topic(partitions=1)
    endpoint, received = collector
    env = {
        **os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "EVENTQ_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
    }
    proc = await asyncio.create_subprocess_exec(
        *EVENTQ, "publish", "-t", topic, "--type", "eventq.ping.v1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    event_id = out.decode().split()[1]  # "published <id> to ..."

    spans = [
        (span, resource.resource) for request in received for resource in request.resource_spans
        for scope in resource.scope_spans for span in scope.spans
    ]
    assert [span.name for span, _ in spans] == [f"send {topic}"]
    span, resource = spans[0]
    attributes = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
    assert attributes["messaging.message.id"] == event_id
    assert attributes["messaging.destination.name"] == topic
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "eventq-cli"
    sent = [
        point.as_int for request in _Collector.metrics for resource_metrics in request.resource_metrics
        for scope in resource_metrics.scope_metrics for metric in scope.metrics
        if metric.name == "messaging.client.sent.messages" for point in metric.sum.data_points
    ]
    assert sent == [1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _lag_lines(text: str) -> list[str]:
    """The lag gauge's samples, one per assigned partition."""
    return [line for line in text.splitlines() if line.startswith("eventq_consumer_lag{")]
