"""Daemon health: outages logged once per change (probe and operations together), readiness rules, the
background probe, and the /livez and /readyz endpoints with their bounds on what clients send."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from structlog.typing import EventDict

from eventq.consumers import health
from eventq.consumers.health import HealthServer, Status
from eventq.consumers.probes import DatabaseProbe, Prober
from eventq.database import DatabaseSettings
from eventq.errors import ConsumerError, DatabaseUnavailable


@pytest.fixture(autouse=True)
def no_outage_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outage back-off steps of zero, so repeated failures take no time."""
    monkeypatch.setattr(health, "_OUTAGE_BACKOFF", (0.0, 0.0, 0.0))


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
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

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
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


async def scrape(registry: CollectorRegistry) -> tuple[str, str, bytes]:
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
    from prometheus_client.metrics_core import Metric

    class Broken:
        def collect(self) -> Iterable[Metric]:
            raise RuntimeError("collector exploded")

    registry = CollectorRegistry()
    registry.register(Broken())
    with capture_logs() as logs:
        status, content_type, body = await scrape(registry)

    assert status == "HTTP/1.1 500 Internal Server Error"
    assert content_type == "application/json"
    assert "collector exploded" in orjson.loads(body)["error"]
    assert events(logs, "health.metrics_failed")


async def raw(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    """Send ``data`` as it is and read everything the server answers, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_code(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[list[EventDict]]:
    """Every structlog event of the test; the test then asserts nothing reached stdlib logging at warning or above."""
    caplog.set_level(logging.WARNING)
    with capture_logs() as logs:
        yield logs
    assert [r.getMessage() for r in caplog.records] == []  # no asyncio "Unhandled exception …" traceback


async def test_binary_garbage_is_answered_400_without_a_log_line(server: HealthServer, quiet: list[EventDict]) -> None:
    """Bytes that are not an HTTP request line get 400 and nothing is logged."""
    response = await raw(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\r\n\r\n")
    assert status_code(response) == 400
    assert quiet == []


async def test_an_oversized_request_line_is_answered_414_without_a_traceback(
    server: HealthServer, quiet: list[EventDict]
) -> None:
    """A 200 kB request line gets 414, read only as far as the 8 KiB bound, with nothing logged."""
    response = await raw(server.port, b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")
    assert status_code(response) == 414
    assert quiet == []


async def test_oversized_or_too_many_headers_are_answered_431(server: HealthServer, quiet: list[EventDict]) -> None:
    """One header over the bound, or more headers than allowed, get 431."""
    big = await raw(server.port, b"GET /livez HTTP/1.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n")
    many = await raw(server.port, b"GET /livez HTTP/1.1\r\n" + b"X-H: 1\r\n" * 100 + b"\r\n")
    assert (status_code(big), status_code(many)) == (431, 431)
    assert quiet == []


async def test_a_malformed_header_line_or_http_2_is_refused(server: HealthServer, quiet: list[EventDict]) -> None:
    """A header line without a colon gets 400; an HTTP/2 request line gets 505."""
    no_colon = await raw(server.port, b"GET /livez HTTP/1.1\r\nnot a header\r\n\r\n")
    http2 = await raw(server.port, b"GET /livez HTTP/2.0\r\n\r\n")
    assert (status_code(no_colon), status_code(http2)) == (400, 505)


async def test_methods_other_than_get_and_head_get_405(server: HealthServer, quiet: list[EventDict]) -> None:
    """POST /readyz gets 405 naming the allowed methods; HEAD gets the headers of GET without a body."""
    post = await raw(server.port, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    head = await raw(server.port, b"HEAD /livez HTTP/1.1\r\n\r\n")
    assert status_code(post) == 405 and b"\r\nAllow: GET, HEAD\r\n" in post
    assert status_code(head) == 200 and head.endswith(b"\r\n\r\n") and b"Content-Length: " in head


async def test_http_1_0_query_strings_and_absolute_targets_reach_the_route(
    server: HealthServer, quiet: list[EventDict]
) -> None:
    """GET /readyz?verbose, an HTTP/1.0 request and an absolute-form target are all served as their path."""
    server.status.assigned = 1
    query = await raw(server.port, b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n")
    old = await raw(server.port, b"GET /livez HTTP/1.0\r\n\r\n")
    absolute = await raw(server.port, b"GET http://localhost/readyz HTTP/1.1\r\n\r\n")
    assert [status_code(r) for r in (query, old, absolute)] == [200, 200, 200]


async def test_empty_and_half_sent_connections_are_dropped_quietly(
    server: HealthServer, quiet: list[EventDict]
) -> None:
    """A connection closed before (or in the middle of) its request gets no answer, and the server keeps serving."""
    assert await raw(server.port, b"", close_write=True) == b""
    assert await raw(server.port, b"GET /livez HT", close_write=True) == b""
    code, _, _ = await get(server, "/livez")
    assert code == 200


async def test_a_slow_client_gets_408_once_the_read_deadline_passes(
    server: HealthServer, quiet: list[EventDict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending its request byte by byte (slowloris) is answered 408 at the deadline, not waited for."""
    monkeypatch.setattr(health, "READ_TIMEOUT_S", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /livez HTTP/1.1\r\nX-Slow: " + b"s" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.01)

    sender = asyncio.create_task(drip())
    try:
        response = await asyncio.wait_for(reader.read(), 10)  # the server answers and closes before the drip ends
    finally:
        sender.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert status_code(response) == 408


async def test_a_connection_flood_is_turned_away_and_the_server_recovers(
    server: HealthServer, quiet: list[EventDict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the connection bound new connections get 503 at once; once the others close, requests are served."""
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 3)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    await asyncio.sleep(0.1)  # (the server accepts them)
    turned_away = await raw(server.port, b"")  # (it need not send: the answer comes before any reading)
    for _, writer in idle:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    async with asyncio.timeout(10):
        while not await _served(server.port):
            await asyncio.sleep(0.05)
    assert status_code(turned_away) == 503


async def _served(port: int) -> bool:
    try:
        return status_code(await raw(port, b"GET /livez HTTP/1.1\r\n\r\n")) == 200
    except ConnectionError:  # turned away before it was read: the kernel resets such a connection
        return False


async def test_a_port_in_use_is_one_consumer_error_saying_what_to_do() -> None:
    """Starting on a taken port raises ConsumerError naming host:port and the setting to change, not OSError."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConsumerError) as raised:
            await HealthServer(Status(), "127.0.0.1", port).start()
    finally:
        taken.close()
    message = str(raised.value)
    assert f"127.0.0.1:{port} is already in use" in message
    assert "--health-port" in message and "EVENTQ_HEALTH_PORT" in message and "0 for any free port" in message
    assert "\n" not in message


# -- probe and operations together ----------------------------------------------------


def test_a_failing_probe_makes_the_daemon_unready_and_is_logged_once() -> None:
    """Probe failures alone (operations fine) turn ready off and log database.unavailable once; a success logs
    database.recovered once."""
    status = Status()
    status.assigned = 1
    with capture_logs() as logs:
        for _ in range(5):
            status.database_probed(TimeoutError("no answer within 2 s"))
        ready_while_failing = status.ready
        status.database_probed(None)
        status.database_probed(None)

    assert ready_while_failing is False and status.ready is True
    [unavailable] = events(logs, "database.unavailable")
    assert unavailable["operation"] == "probe" and unavailable["error_type"] == "TimeoutError"
    assert len(events(logs, "database.recovered")) == 1


async def test_one_outage_seen_by_probe_and_operations_is_one_pair_of_lines() -> None:
    """An outage both the probe and operations notice logs one unavailable line and one recovered line,
    the latter only once both succeed again."""
    status = Status()
    status.assigned = 1
    with capture_logs() as logs:
        status.broker_probed(TimeoutError("no answer"))
        await status.broker_down(TimeoutError("no ack"), "commit")
        status.broker_probed(None)  # the probe answers first: operations still failing
        ready_before_operations = status.ready
        await status.broker_down(TimeoutError("no ack"), "commit")
        status.broker_up()
        status.broker_probed(None)

    assert ready_before_operations is False and status.ready is True
    assert [e["event"] for e in logs] == ["broker.unavailable", "broker.recovered"]
    assert logs[0]["operation"] == "probe"


def test_an_operation_failure_long_unrepeated_is_cleared_by_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure no operation repeated for the stale window, while the probe answers, no longer makes the daemon
    unready."""
    status = Status()
    status.assigned = 1
    status.database_ok = False  # as the committer marks a write it keeps retrying
    status.database_probed(None)
    still_failing = status.ready

    monkeypatch.setattr(health, "_STALE_FAILURE_S", 0.0)
    status.database_probed(None)

    assert still_failing is False and status.ready is True


async def test_the_prober_bounds_a_check_that_hangs_and_still_records_the_other() -> None:
    """A check that never returns counts as not answering after the timeout; the other check's verdict is kept."""
    status = Status()
    hung = asyncio.Event()

    async def answers() -> None:
        pass

    prober = Prober(status, database=answers, broker=hung.wait, timeout_s=0.2)
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            await prober.probe_once()

    assert (status.database_answers, status.broker_answers) == (True, False)
    [unavailable] = events(logs, "broker.unavailable")
    assert "no answer within 0.2 s" in unavailable["error"]


async def test_the_database_probe_gives_up_on_a_server_that_accepts_but_never_answers() -> None:
    """Against a port that accepts connections and says nothing (a stopped postmaster), the probe fails within its
    bound."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    probe = DatabaseProbe(DatabaseSettings(url=f"postgresql://postgres@127.0.0.1:{port}/x"), timeout_s=0.3)
    try:
        async with asyncio.timeout(5):
            with pytest.raises((TimeoutError, DatabaseUnavailable)):
                await probe()
    finally:
        probe.close()
        for writer in accepted:
            writer.close()
        listener.close()
        await listener.wait_closed()
    assert accepted  # it did reach the "server"


async def test_the_prober_runs_in_the_background_until_stopped() -> None:
    """Started, the prober asks again every interval without anyone calling /readyz; stopped, it asks no more."""
    status = Status()
    asked: list[float] = []

    async def check() -> None:
        asked.append(time.monotonic())

    prober = Prober(status, database=check, broker=check, interval_s=0.05)
    prober.start()
    async with asyncio.timeout(5):
        while len(asked) < 6:
            await asyncio.sleep(0.02)
    await prober.stop()
    count = len(asked)
    await asyncio.sleep(0.2)
    assert len(asked) == count


async def test_readyz_confirms_a_200_with_a_round_that_began_after_the_request() -> None:
    """A service that stopped answering just after the last round makes the next /readyz 503, not a stale 200."""
    status = Status()
    status.assigned = 1
    database_up = True

    async def database() -> None:
        if not database_up:
            raise ConnectionRefusedError("refused")

    async def broker() -> None:
        pass

    prober = Prober(status, database=database, broker=broker, interval_s=60)  # no background round meanwhile
    server = HealthServer(status, "127.0.0.1", 0, confirm=prober.confirm)
    with capture_logs() as logs:
        await server.start()
        try:
            await prober.probe_once()
            ready_before = status.ready
            database_up = False
            code, _, body = await get(server, "/readyz")
        finally:
            await server.stop()
            await prober.stop()

    assert ready_before is True
    assert (code, body["database_ok"]) == (503, False)
    assert len(events(logs, "database.unavailable")) == 1
