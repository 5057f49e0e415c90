"""Daemon health: outages logged once per change, readiness rules, and the /livez and /readyz endpoints."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from eventq.consumers import health
from eventq.consumers.health import HealthServer, Status
from eventq.errors import DatabaseUnavailable


@pytest.fixture(autouse=True)
def no_outage_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outage back-off steps of zero, so repeated failures take no time."""
    monkeypatch.setattr(health, "_OUTAGE_BACKOFF", (0.0, 0.0, 0.0))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_database_outage_is_logged_once_and_recovery_once() -> None:
    """Repeated database failures log database.unavailable once; the first success logs database.recovered once."""
    status = Status()
    outage = DatabaseUnavailable("postgresql://db/eventq", "connection refused")

    with capture_logs() as logs:
        for _ in range(4):
            await status.database_down(outage)
        down_while_failing = status.database_ok
        status.database_up()
        status.database_up()

    assert down_while_failing is False
    assert status.database_ok is True
    [unavailable] = events(logs, "database.unavailable")
    assert unavailable["log_level"] == "warning"
    assert unavailable["error_type"] == "DatabaseUnavailable"
    assert "connection refused" in unavailable["error"]
    [recovered] = events(logs, "database.recovered")
    assert recovered["after_attempts"] == 4


async def test_a_second_outage_is_logged_again() -> None:
    """After a recovery, a new outage is a new transition and is logged again."""
    status = Status()
    with capture_logs() as logs:
        await status.database_down(OSError("reset"))
        status.database_up()
        await status.database_down(OSError("reset again"))

    assert [entry["event"] for entry in logs] == ["database.unavailable", "database.recovered", "database.unavailable"]


async def test_outage_backs_off_by_growing_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each consecutive failure waits the next back-off step, staying at the last one."""
    monkeypatch.setattr(health, "_OUTAGE_BACKOFF", (0.1, 0.2, 0.3))
    waits: list[float] = []

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(health.asyncio, "sleep", fake_sleep)
    status = Status()
    with capture_logs():
        for _ in range(5):
            await status.database_down(OSError("refused"))

    assert waits == [0.1, 0.2, 0.3, 0.3, 0.3]


async def test_broker_outage_is_logged_once_with_the_operation() -> None:
    """Repeated broker failures log broker.unavailable once, naming the operation; recovery logs once."""
    status = Status()
    with capture_logs() as logs:
        for _ in range(3):
            await status.broker_down(TimeoutError("no ack"), "commit")
        status.broker_up()

    [unavailable] = events(logs, "broker.unavailable")
    assert unavailable["operation"] == "commit"
    assert events(logs, "broker.recovered")[0]["after_attempts"] == 3


def test_ready_needs_partitions_and_healthy_dependencies() -> None:
    """ready is True only with partitions assigned and both Kafka and PostgreSQL not known to be failing."""
    status = Status()
    assert status.ready is False  # nothing assigned yet

    status.assigned = 2
    assert status.ready is True

    status.database_ok = False
    assert status.ready is False

    status.database_ok, status.broker_ok = True, False
    assert status.ready is False


def test_live_follows_the_heartbeat() -> None:
    """live is True while the loop beat within the window and False once the beat is older."""
    status = Status()
    assert status.live is True

    status.heartbeat = time.monotonic() - health.LIVENESS_WINDOW_S - 1
    assert status.live is False

    status.beat()
    assert status.live is True


# -- HTTP ---------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    with capture_logs():
        server = HealthServer(Status(), "127.0.0.1", 0)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def get(server: HealthServer, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, orjson.loads(body)


async def test_server_listens_on_the_port_it_was_given(server: HealthServer) -> None:
    """Started on port 0, the server reports the free port it bound."""
    assert server.port != 0


async def test_livez_is_200_json_while_the_loop_beats(server: HealthServer) -> None:
    """GET /livez answers 200 with a JSON body describing the state."""
    code, headers, body = await get(server, "/livez")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert body == {"live": True, "ready": False, "assigned_partitions": 0, "broker_ok": True, "database_ok": True}


async def test_livez_is_503_when_the_loop_stalled(server: HealthServer) -> None:
    """GET /livez answers 503 once the heartbeat is older than the liveness window."""
    server.status.heartbeat = time.monotonic() - health.LIVENESS_WINDOW_S - 1
    code, _, body = await get(server, "/livez")
    assert (code, body["live"]) == (503, False)


async def test_readyz_follows_readiness(server: HealthServer) -> None:
    """GET /readyz answers 503 with no partitions or a database outage, and 200 when ready."""
    code, _, body = await get(server, "/readyz")
    assert (code, body["ready"], body["assigned_partitions"]) == (503, False, 0)

    server.status.assigned = 3
    code, _, body = await get(server, "/readyz")
    assert (code, body["ready"], body["assigned_partitions"]) == (200, True, 3)

    server.status.database_ok = False
    code, _, body = await get(server, "/readyz")
    assert (code, body["ready"], body["database_ok"]) == (503, False, False)


async def test_unknown_path_is_404(server: HealthServer) -> None:
    """Any other path answers 404 with a JSON body naming the three routes."""
    code, _, body = await get(server, "/status")
    assert code == 404
    assert body == {"error": "not found; use /livez, /readyz or /metrics"}


async def scrape(registry: Any) -> tuple[str, str, bytes]:
    """(status line, content type, body) of GET /metrics on a server for ``registry``."""
    server = HealthServer(Status(), "127.0.0.1", 0, registry=registry)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers["Content-Type"], body


async def test_metrics_serves_the_registry_in_prometheus_text_format() -> None:
    """/metrics answers 200 with the registry's samples in the Prometheus 0.0.4 text format."""
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("eventq_test_things", "Things.", registry=registry).inc(3)
    with capture_logs():
        status, content_type, body = await scrape(registry)

    assert status == "HTTP/1.1 200 OK"
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "eventq_test_things_total 3.0" in body.decode()


async def test_a_failing_metrics_collector_answers_500_saying_why() -> None:
    """A collector that raises gives a 500 with a JSON reason (and a log line), not a dropped connection."""
    from prometheus_client import CollectorRegistry

    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("collector exploded")

    registry = CollectorRegistry()
    registry.register(Broken())  # type: ignore[arg-type]
    with capture_logs() as logs:
        status, content_type, body = await scrape(registry)

    assert status == "HTTP/1.1 500 Internal Server Error"
    assert content_type == "application/json"
    assert "collector exploded" in orjson.loads(body)["error"]
    assert events(logs, "health.metrics_failed")
