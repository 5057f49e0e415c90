"""Daemon health: what state it is in, logged once per change, served over HTTP.

``GET /livez``  200 while the daemon's event loop turns (a ticker beats every second;
               no beat for 30 s means 503), else 503.
``GET /readyz`` 200 when partitions are assigned and Kafka and PostgreSQL both answer
(each is asked, with a 2 s limit, when the request comes), else 503. Both answer with
a small JSON body saying why.
``GET /metrics`` the Prometheus text format of a ``prometheus_client`` registry (by
default the global one, where the CLI's OpenTelemetry Prometheus reader puts eventq's
metrics; see :mod:`eventq.telemetry.metrics`).

The server is a few lines on :func:`asyncio.start_server`: three fixed GET routes do
not justify a web framework dependency (docs/adr/0006-consumer-daemon.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from eventq.database import is_outage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("eventq.consumer")

LIVENESS_WINDOW_S = 30.0
_JSON = "application/json"
_OUTAGE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class Status:
    """Shared health state; transitions are logged once each (not once per retry)."""

    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.assigned = 0
        self.broker_ok = True  # as seen by the daemon's own operations (logged on change)
        self.database_ok = True
        self.broker_answers = True  # as seen by the last /readyz probe (not logged)
        self.database_answers = True
        self._db_failures = 0
        self._broker_failures = 0

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.heartbeat < LIVENESS_WINDOW_S

    @property
    def ready(self) -> bool:
        return (
            self.assigned > 0 and self.broker_ok and self.database_ok and self.broker_answers
            and self.database_answers
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "ready": self.ready,
            "assigned_partitions": self.assigned,
            "broker_ok": self.broker_ok and self.broker_answers,
            "database_ok": self.database_ok and self.database_answers,
        }

    async def database_down(self, exc: BaseException) -> None:
        """Note a database outage, then wait a back-off step before the caller retries."""
        if self.database_ok:
            self.database_ok = False
            log.warning("database.unavailable", error_type=type(exc).__name__, error=str(exc))
        self._db_failures += 1
        await asyncio.sleep(_OUTAGE_BACKOFF[min(self._db_failures, len(_OUTAGE_BACKOFF)) - 1])

    def database_up(self) -> None:
        if not self.database_ok:
            self.database_ok = True
            log.info("database.recovered", after_attempts=self._db_failures)
        self._db_failures = 0

    async def broker_down(self, exc: BaseException, what: str) -> None:
        """Note a broker failure (commit or dead-letter publish), then back off."""
        if self.broker_ok:
            self.broker_ok = False
            log.warning("broker.unavailable", operation=what, error_type=type(exc).__name__, error=str(exc))
        self._broker_failures += 1
        await asyncio.sleep(_OUTAGE_BACKOFF[min(self._broker_failures, len(_OUTAGE_BACKOFF)) - 1])

    def broker_up(self) -> None:
        if not self.broker_ok:
            self.broker_ok = True
            log.info("broker.recovered", after_attempts=self._broker_failures)
        self._broker_failures = 0


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


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` for one :class:`Status`, and ``/metrics`` from a Prometheus registry."""

    def __init__(
        self,
        status: Status,
        host: str,
        port: int,
        probe: Callable[[], Awaitable[None]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.status = status
        self.registry = registry  # prometheus_client registry for /metrics (None: the global one)
        self.host = host
        self.port = port
        self._probe = probe  # checks the services now (updating ``status``) before /readyz answers
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health.serving", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            code, content_type, body = await self._answer(parts[1] if len(parts) >= 2 else "")
            writer.write(
                f"HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (OSError, TimeoutError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str) -> tuple[str, str, bytes]:
        """(status line, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            try:
                body, content_type = self._metrics()
            except Exception as exc:  # a failing collector: say so instead of dropping the connection
                log.warning("health.metrics_failed", error_type=type(exc).__name__, error=str(exc))
                return "500 Internal Server Error", _JSON, orjson.dumps({"error": f"metrics failed: {exc!r}"})
            return "200 OK", content_type, body
        if path not in ("/livez", "/readyz"):
            return "404 Not Found", _JSON, orjson.dumps({"error": "not found; use /livez, /readyz or /metrics"})
        if path == "/readyz" and self._probe is not None:
            await self._probe()
        state = self.status.as_dict()
        ok = state["live"] if path == "/livez" else state["ready"]
        return ("200 OK" if ok else "503 Service Unavailable"), _JSON, orjson.dumps(state)

    def _metrics(self) -> tuple[bytes, str]:
        import prometheus_client  # here, not at import: only a scrape needs it

        registry = self.registry if self.registry is not None else prometheus_client.REGISTRY
        # generate_latest writes the 0.0.4 text format; say so (CONTENT_TYPE_LATEST names 1.0.0).
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_PLAIN_0_0_4
