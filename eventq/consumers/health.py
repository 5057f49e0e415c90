"""Daemon health: what state it is in, logged once per change, served over HTTP.

``GET /livez``  200 while the daemon's event loop turns (a ticker beats every second;
               no beat for 30 s means 503), else 503.
``GET /readyz`` 200 when partitions are assigned and Kafka and PostgreSQL both answer,
               else 503. "Answer" is what the daemon's own operations saw last and what
               a background probe (:mod:`eventq.consumers.probes`: ``SELECT 1`` on a
               connection of its own, a metadata request, each bounded to 2 s, every
               second) saw last, so it turns 503 within about 3 s of a service that
               stops answering, busy pool or not, and answers a 503 at once. Before a
               200 it has the probe ask again (at most 2 s), so a 200 is never older
               than the request.
Both answer with a small JSON body saying why.
``GET /metrics`` the Prometheus text format of a ``prometheus_client`` registry (by
default the global one, where the CLI's OpenTelemetry Prometheus reader puts eventq's
metrics; see :mod:`eventq.telemetry.metrics`).

One outage of a service is one ``database.unavailable`` (or ``broker.unavailable``)
line and one ``database.recovered`` (``broker.recovered``) line, whether the probe or
an operation noticed it first: it is over when both the probe and the operations
succeed again.

The server is a few lines on :func:`asyncio.start_server`: three fixed GET routes do
not justify a web framework dependency (docs/adr/0006-consumer-daemon.md). It reads at
most 8 KiB of request line and 16 KiB of headers within 5 s, answers anything else
with a 4xx and no log line, and serves at most 64 connections at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import structlog

from eventq.database import is_outage
from eventq.errors import ConsumerError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("eventq.consumer")

LIVENESS_WINDOW_S = 30.0
_JSON = "application/json"
_OUTAGE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
# An operation's failure not repeated for this long, while the probe answers, is over
# (operations retry at least every back-off step; this catches one abandoned mid-outage).
_STALE_FAILURE_S = 30.0


class _Dependency:
    """One service as seen by the daemon's operations and by the probe; logged once per outage."""

    def __init__(self, unavailable: str, recovered: str) -> None:
        self._unavailable = unavailable  # the log event names
        self._recovered = recovered
        self.operations_ok = True
        self.answers = True
        self.failures = 0  # consecutive failed operations (for their back-off)
        self.failed_at = 0.0
        self._down_since: float | None = None  # reported unavailable, not yet recovered

    @property
    def ok(self) -> bool:
        return self.operations_ok and self.answers

    def operation_failed(self, exc: BaseException, **fields: Any) -> None:
        self.operations_ok = False
        self.failed_at = time.monotonic()
        self.failures += 1
        self._report_down(exc, fields)

    def operation_succeeded(self) -> None:
        self.operations_ok = True
        self._report_up()
        self.failures = 0

    def probed(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.answers = False
            self._report_down(exc, {"operation": "probe"})
            return
        self.answers = True
        if not self.operations_ok and time.monotonic() - self.failed_at > _STALE_FAILURE_S:
            self.operations_ok = True
        self._report_up()

    def _report_down(self, exc: BaseException, fields: dict[str, Any]) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(self._unavailable, **fields, error_type=type(exc).__name__, error=str(exc)[:1000])

    def _report_up(self) -> None:
        if self._down_since is not None and self.ok:
            down_s = time.monotonic() - self._down_since
            self._down_since = None
            log.info(self._recovered, after_attempts=self.failures, down_s=round(down_s, 1))


class Status:
    """Shared health state; transitions are logged once each (not once per retry)."""

    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.assigned = 0
        self._database = _Dependency("database.unavailable", "database.recovered")
        self._broker = _Dependency("broker.unavailable", "broker.recovered")

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.heartbeat < LIVENESS_WINDOW_S

    @property
    def ready(self) -> bool:
        return self.assigned > 0 and self._broker.ok and self._database.ok

    # As seen by the daemon's own operations (an assignment is not logged; the calls below are).
    @property
    def database_ok(self) -> bool:
        return self._database.operations_ok

    @database_ok.setter
    def database_ok(self, ok: bool) -> None:
        self._database.operations_ok = ok
        if not ok:
            self._database.failed_at = time.monotonic()

    @property
    def broker_ok(self) -> bool:
        return self._broker.operations_ok

    @broker_ok.setter
    def broker_ok(self, ok: bool) -> None:
        self._broker.operations_ok = ok
        if not ok:
            self._broker.failed_at = time.monotonic()

    # As seen by the last probe.
    @property
    def database_answers(self) -> bool:
        return self._database.answers

    @property
    def broker_answers(self) -> bool:
        return self._broker.answers

    def as_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "ready": self.ready,
            "assigned_partitions": self.assigned,
            "broker_ok": self._broker.ok,
            "database_ok": self._database.ok,
        }

    async def database_down(self, exc: BaseException) -> None:
        """Note a database outage, then wait a back-off step before the caller retries."""
        self._database.operation_failed(exc)
        failures = self._database.failures
        await asyncio.sleep(_OUTAGE_BACKOFF[min(failures, len(_OUTAGE_BACKOFF)) - 1])

    def database_up(self) -> None:
        self._database.operation_succeeded()

    async def broker_down(self, exc: BaseException, what: str) -> None:
        """Note a broker failure (commit or dead-letter publish), then back off."""
        self.broker_failed(exc, what)
        failures = self._broker.failures
        await asyncio.sleep(_OUTAGE_BACKOFF[min(failures, len(_OUTAGE_BACKOFF)) - 1])

    def broker_failed(self, exc: BaseException, what: str) -> None:
        """Note a broker failure; the caller backs off on its own terms."""
        self._broker.operation_failed(exc, operation=what)

    def broker_up(self) -> None:
        self._broker.operation_succeeded()

    def database_probed(self, exc: BaseException | None) -> None:
        """The probe's verdict on PostgreSQL: None if it answered, else why not."""
        self._database.probed(exc)

    def broker_probed(self, exc: BaseException | None) -> None:
        """The probe's verdict on Kafka: None if it answered, else why not."""
        self._broker.probed(exc)


async def with_database(status: Status, operation: Any) -> Any:
    """Run ``await operation()`` until it succeeds, waiting out database outages.

    Errors that are not outages (a bug, a missing table) propagate at once.
    """
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not is_outage(exc):
                raise
            await status.database_down(exc)
            continue
        status.database_up()
        return result


# -- HTTP ---------------------------------------------------------------------------

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_CONNECTIONS = 64
READ_TIMEOUT_S = 5.0
_WRITE_TIMEOUT_S = 5.0
_CONFIRM_TIMEOUT_S = 5.0
_LINGER_S = 1.0  # after answering, read (and drop) what the client still sends, so it sees the answer
_LINGER_BYTES = 256 * 1024
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (\S{1,8192}) HTTP/([0-9])\.([0-9])")
_ROUTES = ("/livez", "/readyz", "/metrics")

Response = tuple[str, str, bytes]  # (status line, content type, body)


class _Refused(Exception):
    """A request answered with an error before it reaches a route."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.response: Response = (status, _JSON, orjson.dumps({"error": message}))


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path) of the request at the head of ``reader``; its headers read and dropped.

    Raises ``_Refused`` (400, 414, 431, 505) for what is not a bounded HTTP/1.x request, and
    ``asyncio.IncompleteReadError`` if the client closed first. The reader's limit must be
    at least :data:`MAX_REQUEST_LINE`.
    """
    line = await _line(reader, MAX_REQUEST_LINE, "414 URI Too Long", "request line over 8 KiB")
    match = _REQUEST_LINE.fullmatch(line.rstrip(b"\r"))
    if match is None:
        raise _Refused("400 Bad Request", "not an HTTP/1.x request line")
    method, target, major = match.group(1).decode(), match.group(2).decode("latin-1"), match.group(3)
    if major != b"1":
        raise _Refused("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served")
    total = 0
    for _ in range(MAX_HEADERS + 1):
        header = (await _line(reader, MAX_HEADER_BYTES, "431 Request Header Fields Too Large",
                              "headers over 16 KiB")).rstrip(b"\r")  # fmt: skip
        if not header:
            break
        total += len(header)
        if total > MAX_HEADER_BYTES:
            raise _Refused("431 Request Header Fields Too Large", "headers over 16 KiB")
        if b":" not in header:
            raise _Refused("400 Bad Request", "malformed header line")
    else:
        raise _Refused("431 Request Header Fields Too Large", f"more than {MAX_HEADERS} headers")
    path = urlsplit(target).path  # "/readyz?verbose" and "http://host/readyz" both mean /readyz
    if not path.startswith("/"):
        raise _Refused("400 Bad Request", "the request target must be a path")
    return method, path


async def _line(reader: asyncio.StreamReader, limit: int, status: str, message: str) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _Refused(status, message) from None
    if len(line) > limit:
        raise _Refused(status, message)
    return line[:-1]


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` for one :class:`Status`, and ``/metrics`` from a Prometheus registry.

    It never raises into the daemon and never logs a traceback for what a client sends.
    """

    def __init__(
        self,
        status: Status,
        host: str,
        port: int,
        registry: CollectorRegistry | None = None,
        confirm: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self._confirm = confirm  # re-asks the services (updating ``status``) before /readyz says 200
        self.registry = registry  # prometheus_client registry for /metrics (None: the global one)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Listen; ConsumerError (one line saying what to do) if the port cannot be bound."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=max(MAX_REQUEST_LINE, MAX_HEADER_BYTES)
            )
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            problem = (
                f"health port {where} is already in use" if exc.errno == errno.EADDRINUSE
                else f"cannot serve health on {where} ({exc.strerror or exc})"
            )
            raise ConsumerError(
                f"{problem}; choose another --health-port (EVENTQ_HEALTH_PORT), or 0 for any free port"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health.serving", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._connections.values():
                writer.transport.abort()  # each connection's task then ends on its own, at once
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=_WRITE_TIMEOUT_S)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        writer.transport.set_write_buffer_limits(0)  # drain() returns once all is with the kernel
        try:
            if len(self._connections) >= MAX_CONNECTIONS:  # a flood: answer without reading, serve the others
                self._write(writer, "503 Service Unavailable", _JSON, b'{"error":"too many connections"}', "GET")
                return
            self._connections[task] = writer
            method = "GET"
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    method, path = await read_request(reader)
            except _Refused as refused:
                response = refused.response
            except TimeoutError:
                response = _Refused("408 Request Timeout", "request not received within 5 s").response
            else:
                response = await self._route(method, path)
            self._write(writer, *response, method)
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await writer.drain()
            await self._linger(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or would not read the answer
        except asyncio.CancelledError:
            pass  # the loop is closing; ending cancelled would make asyncio log it as an error
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the daemon down; one line, no traceback
            log.warning("health.request_failed", error_type=type(exc).__name__, error=str(exc)[:1000])
        finally:
            self._connections.pop(task, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read holds nothing here
            else:
                writer.close()

    @staticmethod
    def _write(writer: asyncio.StreamWriter, status: str, content_type: str, body: bytes, method: str) -> None:
        allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{allow}"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + (b"" if method == "HEAD" else body))

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing with unread input makes the kernel reset the connection, which can
        # discard the answer before the client reads it; so half-close and drain a little.
        if writer.can_write_eof():
            writer.write_eof()
        drained = 0
        try:
            async with asyncio.timeout(_LINGER_S):
                while drained < _LINGER_BYTES and (chunk := await reader.read(65536)):
                    drained += len(chunk)
        except TimeoutError:
            pass

    async def _route(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _Refused("405 Method Not Allowed", "only GET and HEAD are served").response
        return await self._answer(path)

    async def _answer(self, path: str) -> Response:
        """(status line, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            try:
                body, content_type = self._metrics()
            except Exception as exc:  # a failing collector: say so instead of dropping the connection
                log.warning("health.metrics_failed", error_type=type(exc).__name__, error=str(exc))
                return "500 Internal Server Error", _JSON, orjson.dumps({"error": f"metrics failed: {exc!r}"})
            return "200 OK", content_type, body
        if path not in _ROUTES:
            return "404 Not Found", _JSON, orjson.dumps({"error": "not found; use /livez, /readyz or /metrics"})
        if path == "/readyz" and self._confirm is not None and self.status.ready:
            with contextlib.suppress(TimeoutError):  # (each check is bounded; this bounds the request too)
                async with asyncio.timeout(_CONFIRM_TIMEOUT_S):
                    await self._confirm()
        state = self.status.as_dict()
        ok = state["live"] if path == "/livez" else state["ready"]
        return ("200 OK" if ok else "503 Service Unavailable"), _JSON, orjson.dumps(state)

    def _metrics(self) -> tuple[bytes, str]:
        import prometheus_client  # here, not at import: only a scrape needs it

        registry = self.registry if self.registry is not None else prometheus_client.REGISTRY
        # generate_latest writes the 0.0.4 text format; say so (CONTENT_TYPE_LATEST names 1.0.0).
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_PLAIN_0_0_4
