"""The outbox relay: publishes committed outbox rows to Kafka, then removes them.

Guarantees:

- Only committed rows are read, so an event from a transaction that rolled back is
  never published.
- A row is removed (or marked published, with ``keep_published_s``) only after the
  broker acknowledged its record with ``acks=all``. A crash between the two
  publishes the event again, with the same id: at least once, never lost.
- Within one share, rows are sent in id order, so the events of one partition key go
  to Kafka in the order their transactions committed (:mod:`eventq.outbox.rows`).
  Exceptions: a row set aside (below) is skipped by the later rows of its key; and if
  the broker fails one record batch of a partition while acknowledging a later one,
  the failed events are sent again after the later ones.
- At most one relay publishes a share at a time; when it dies another takes over
  within seconds (:mod:`eventq.outbox.shares`).
- Failures never lose a row. Broker down or a timeout: the rows stay and their topic
  backs off (``backoff_initial_s`` doubling to ``backoff_max_s``); a missing topic:
  the same, for that topic only, while other topics go on. A row that cannot be sent
  for a permanent reason (too large for the topic, even sent alone; unreadable) is
  *parked*: kept with its error, reported by ``eventq outbox status``, skipped until
  ``eventq outbox unpark``.

It wakes on ``NOTIFY eventq_outbox`` (sent by every committing transaction that added
rows) and polls every ``poll_interval_s`` in case a notification was missed.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from eventq.consumers.health import HealthServer, Status
from eventq.consumers.probes import DatabaseProbe, Prober
from eventq.database import connect, is_outage
from eventq.errors import BrokerUnavailable, EventqError, MessageTooLarge, PublishTimeout, RelayError
from eventq.kafka import TOPIC_NAME, ask_metadata
from eventq.outbox import table
from eventq.outbox.rows import CHANNEL
from eventq.outbox.settings import RelaySettings
from eventq.outbox.shares import BALANCE_INTERVAL_S, Shares
from eventq.producers.producer import Producer
from eventq.redact import redact
from eventq.schemas.envelope import RecordParts
from eventq.schemas.registry import SchemaRegistry
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.telemetry.metrics import RelayMetrics
from eventq.wire import H_TRACEPARENT, H_TRACESTATE

log = structlog.get_logger("eventq.outbox")

BACKLOG_INTERVAL_S = 5.0  # how often the pending and oldest-age gauges are refreshed
PURGE_INTERVAL_S = 60.0  # how often kept published rows past keep_published_s are deleted
QUERY_TIMEOUT_S = 30.0  # a statement that takes longer means the connection is stuck
_MAX_ERROR = 1000
_SHOWN_IDS = 20  # event ids named in one log line


class RelayStatus(Status):
    """Health of a relay: ready while PostgreSQL and Kafka answer (a stand-by relay holding no share is ready);
    live while its loop turns: every step of a turn is bounded, so a turn that has not ended within
    ``window_s`` is stuck, and a restart (``/livez`` 503) hands its shares to another relay."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.shares: tuple[int, ...] = ()
        self.window_s = window_s

    @property
    def live(self) -> bool:
        return time.monotonic() - self.heartbeat < self.window_s

    @property
    def ready(self) -> bool:
        return self._broker.ok and self._database.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "live": self.live, "ready": self.ready, "shares": list(self.shares),
            "broker_ok": self._broker.ok, "database_ok": self._database.ok,
        }


class _Row:
    """One row read for sending: the record rebuilt from its columns."""

    __slots__ = ("id", "topic", "event_id", "record", "creation")

    def __init__(self, id: int, topic: str, event_id: str, record: RecordParts, creation: Any) -> None:
        self.id = id
        self.topic = topic
        self.event_id = event_id
        self.record = record
        self.creation = creation


class _Round:
    """What one round's sends came to, settled in the database together."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.failed: dict[str, list[_Row]] = {}  # error text -> rows
        self.parked: dict[str, list[_Row]] = {}


def _rebuild(r: Any, traced: bool) -> _Row:
    """The record of a row (a NEXT_ROWS record); ValueError (the row is parked) when its columns cannot make one."""
    row_id, topic, event_id, event_type, key, value, timestamp_ms, source, time_text, correlation, headers = r
    extra: tuple[tuple[str, bytes], ...] | None = None
    creation = None
    if headers is not None:
        pairs = orjson.loads(headers)
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in pairs
        ):
            raise ValueError("headers is not a JSON list of [name, value] text pairs")
        extra = tuple((name, text.encode()) for name, text in pairs)
        if traced:
            found = dict(pairs)
            ctx = tr.context_from_traceparent(found.get(H_TRACEPARENT), found.get(H_TRACESTATE))
            creation = tr.span_context_of(ctx) if ctx is not None else None
    record: RecordParts = (
        key, value, timestamp_ms, event_id.encode(), source.encode(), event_type.encode(), time_text.encode(),
        correlation.encode(), extra,
    )
    return _Row(row_id, topic, event_id, record, creation)


def _poisons(error: EventqError) -> bool:
    """True for a failure after which the producer's idempotent state is off (only a new producer recovers)."""
    return "OutOfOrderSequence" in str(error) or "InvalidProducerEpoch" in str(error)


class _Backoff:
    """Per topic: consecutive failed sends, and when the next may start."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._initial = initial_s
        self._max = max_s
        self.until: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def failed(self, topic: str) -> float:
        n = self._failures[topic] = self._failures.get(topic, 0) + 1
        delay: float = min(self._initial * 2.0 ** (n - 1), self._max) * random.uniform(0.8, 1.2)
        self.until[topic] = time.monotonic() + delay
        return delay

    def succeeded(self, topic: str) -> bool:
        """Forget the topic's failures; True if it had any."""
        self.until.pop(topic, None)
        return self._failures.pop(topic, None) is not None

    def waiting(self) -> list[str]:
        now = time.monotonic()
        for topic in [t for t, until in self.until.items() if until <= now]:
            del self.until[topic]
        return list(self.until)

    def next_due(self) -> float | None:
        return min(self.until.values(), default=None)

    def ended(self) -> bool:
        """True if some topic's back-off is over (its rows may be read again)."""
        now = time.monotonic()
        return any(until <= now for until in self.until.values())


class Relay:
    """Publishes the outbox; run with ``await relay.run()``, stop with :meth:`stop` (or SIGTERM via the CLI)."""

    def __init__(self, settings: RelaySettings | None = None, *, telemetry: Telemetry | None = None) -> None:
        self.settings = settings if settings is not None else RelaySettings.from_env()
        self.telemetry = telemetry or Telemetry()
        # The longest a healthy turn takes: a send (delivery timeout), its settling statements, a margin.
        self.status = RelayStatus(self.settings.producer.delivery_timeout_s + 3 * QUERY_TIMEOUT_S + 10)
        self.health: HealthServer | None = None
        self._tracing = tr.Tracing(self.telemetry.tracer_provider)
        self._metrics = RelayMetrics(self.telemetry.meter_provider)
        self._producer = self._new_producer()
        self._shares = Shares()
        self._backoff = _Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._prober: Prober | None = None
        self._due = {"balance": 0.0, "backlog": 0.0, "purge": 0.0}
        self._read_at = 0.0  # when to read again without a NOTIFY (the polling fallback)
        self.relayed = 0  # events acknowledged since start

    def stop(self) -> None:
        """Finish the round in flight, then return from :meth:`run`."""
        self._stopping.set()
        self._wake.set()

    async def run(self, *, until_empty: bool = False) -> None:
        """Relay until :meth:`stop`; with ``until_empty``, return once nothing this relay can send is pending.

        Raises BrokerUnavailable or DatabaseUnavailable if Kafka or PostgreSQL does not
        answer at start-up (and RelayError without the outbox table); later outages are
        waited out (``/readyz`` says 503 meanwhile).
        """
        s = self.settings
        await self._producer.start()
        try:
            await self._connected()
        except BaseException:
            await self._producer.stop()
            raise
        self.status.beat()
        self._prober = Prober(self.status, database=DatabaseProbe(s.database), broker=self._probe)
        self._prober.start()
        try:
            if s.health_port is not None:
                self.health = HealthServer(
                    self.status, s.health_host, s.health_port, registry=self.telemetry.prometheus_registry,
                    confirm=self._prober.confirm,
                )
                await self.health.start()
            log.info("outbox.relay_started", database=s.database.safe_url, batch_size=s.batch_size)
            while not self._stopping.is_set():
                if await self._turn() and until_empty:
                    break
        finally:
            if self.health is not None:
                await self.health.stop()
            await self._prober.stop()
            await self._disconnect(closing=True)
            await self._producer.stop()
            log.info("outbox.relay_stopped", relayed=self.relayed)

    async def _probe(self) -> None:
        aio = self._producer._aio  # noqa: SLF001 - the relay's own client answers for the broker
        if aio is None:
            raise BrokerUnavailable("", "the relay's producer is not started")
        await ask_metadata(aio.client)

    # -- one turn of the loop ------------------------------------------------------------

    async def _turn(self) -> bool:
        """Balance shares, then read and send one round if there is reason to; True when idle (nothing read)."""
        self.status.beat()  # liveness is the loop turning (see RelayStatus)
        try:
            conn = await self._connected()
            before = self._shares.held
            await self._chores(conn)
            held = self.status.shares = self._shares.held
            now = time.monotonic()
            if held != before:
                self._read_at = now  # new shares may hold rows: read them now
            if not held or (not self._wake.is_set() and now < self._read_at and not self._backoff.ended()):
                await self._wait()
                return False
            if self._stopping.is_set():
                return True
            self._wake.clear()
            waiting = self._backoff.waiting()
            rows = await conn.fetch(table.NEXT_ROWS, list(held), waiting, self.settings.batch_size,
                                    timeout=QUERY_TIMEOUT_S)
            self.status.database_up()
            # A full round means more may be waiting: read again at once; otherwise on NOTIFY or the poll.
            self._read_at = now if len(rows) >= self.settings.batch_size else now + self.settings.poll_interval_s
            if not rows:
                return not waiting
            await self._relay(conn, rows)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not is_outage(exc):
                raise
            # The connection (and every share lock on it) is no longer trusted: start over.
            await self._disconnect()
            await self.status.database_down(exc)
            return False

    async def _wait(self) -> None:
        """Until a NOTIFY, a stop, the next read (poll), a topic's back-off ending or the next share balance."""
        wake_at = min(self._read_at, self._due["balance"], self._backoff.next_due() or math.inf)
        timeout = max(0.0, wake_at - time.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _connected(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._shares.lost()
        db = self.settings.database
        conn = await connect(db, server_settings={
            "application_name": f"eventq-relay {socket.gethostname()}:{os.getpid()}"[:63],
            # A relay whose host vanishes loses its shares within ~11 s, not hours.
            "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
        })
        try:
            if await conn.fetchval("SELECT to_regclass('eventq_outbox')", timeout=QUERY_TIMEOUT_S) is None:
                raise RelayError(
                    f"the database at {db.safe_url} has no eventq_outbox table; run 'eventq db migrate'"
                )
            await self._shares.join(conn)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._due["balance"] = 0.0
        self.status.database_up()
        return conn

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _disconnect(self, *, closing: bool = False) -> None:
        conn, self._conn = self._conn, None
        self._shares.lost(closing=closing)
        self.status.shares = ()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:  # noqa: BLE001 - a broken connection: drop it
                conn.terminate()

    async def _chores(self, conn: asyncpg.Connection) -> None:
        """Share balancing every second; the backlog gauges and the purge of kept rows now and then."""
        now = time.monotonic()
        due = self._due
        if now >= due["balance"]:
            due["balance"] = now + BALANCE_INTERVAL_S
            await self._shares.balance(conn)
        if now >= due["backlog"]:
            due["backlog"] = now + BACKLOG_INTERVAL_S
            count, oldest = await conn.fetchrow(table.BACKLOG, timeout=QUERY_TIMEOUT_S)
            self.status.beat()
            self._metrics.backlog(count, oldest or 0.0)
        keep = self.settings.keep_published_s
        if keep and now >= due["purge"]:
            due["purge"] = now + PURGE_INTERVAL_S
            await conn.execute(table.PURGE_PUBLISHED, timedelta(seconds=keep), timeout=QUERY_TIMEOUT_S)

    # -- sending a round -------------------------------------------------------------------

    async def _relay(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> None:
        traced = self._tracing.enabled
        result = _Round()
        by_topic: dict[str, list[_Row]] = {}
        topic_ok: dict[str, bool] = {}
        for r in rows:
            try:
                topic = r[1]
                ok = topic_ok.get(topic)
                if ok is None:
                    ok = topic_ok[topic] = TOPIC_NAME.fullmatch(topic) is not None
                if not ok:
                    raise ValueError("its topic is not a Kafka topic name")
                row = _rebuild(r, traced)
            except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
                unreadable = _Row(r["id"], r["topic"], str(r["event_id"]), None, None)  # type: ignore[arg-type]
                result.parked.setdefault(f"unreadable row: {exc}"[:_MAX_ERROR], []).append(unreadable)
                continue
            by_topic.setdefault(row.topic, []).append(row)
        sent = await asyncio.gather(*(self._send(topic, topic_rows) for topic, topic_rows in by_topic.items()))
        for (topic, topic_rows), (acked, failed, too_large) in zip(by_topic.items(), sent, strict=True):
            if too_large or any(_poisons(error) for _, error in failed):
                await self._restart_producer()
            for row in too_large:  # refused in a batch with others; alone, it may fit
                error: EventqError = too_large[row]
                if len(topic_rows) > 1:
                    alone = await self._send(topic, [row])
                    self.status.beat()
                    if alone[0]:
                        acked.extend(alone[0])
                        continue
                    if alone[1]:
                        failed.extend(alone[1])
                        continue
                    await self._restart_producer()
                    error = alone[2][row]
                result.parked.setdefault(redact(f"{type(error).__name__}: {error}")[:_MAX_ERROR], []).append(row)
            result.acked.extend(acked)
            self._metrics.relayed(topic, len(acked))
            self.relayed += len(acked)
            if acked:
                log.debug("outbox.published", topic=topic, events=len(acked),
                          event_ids=[r.event_id for r in topic_rows[:_SHOWN_IDS]])
            if failed:
                self._failing(topic, failed, result)
            else:
                if self._backoff.succeeded(topic):
                    log.info("outbox.topic_recovered", topic=topic)
                self.status.broker_up()
        await self._settle(conn, result)

    async def _send(
        self, topic: str, rows: list[_Row]
    ) -> tuple[list[int], list[tuple[_Row, EventqError]], dict[_Row, EventqError]]:
        """Send one topic's rows: the ids acknowledged, the rows that failed, the rows refused as too large."""
        acked: list[int] = []
        failed: list[tuple[_Row, EventqError]] = []
        too_large: dict[_Row, EventqError] = {}
        try:
            report = await self._producer.send_encoded(
                topic, [r.event_id for r in rows], [r.record for r in rows],
                creations=[r.creation for r in rows if r.creation is not None],
            )
        except EventqError as exc:  # nothing was sent (topic missing, broker unreachable, not authorised)
            return acked, [(r, exc) for r in rows], too_large
        errors = report.errors_by_index()
        if not errors:  # the usual round: no outcome objects built
            return [r.id for r in rows], failed, too_large
        for index, row in enumerate(rows):
            error = errors.get(index)
            if error is None:
                acked.append(row.id)
            elif isinstance(error, MessageTooLarge):
                too_large[row] = error
            else:
                failed.append((row, error))
        return acked, failed, too_large

    async def _restart_producer(self) -> None:
        """A new producer (a new producer id): after the broker refused a batch, aiokafka's idempotent
        sequence for that partition no longer matches the broker's, and every later batch to it would
        fail with OutOfOrderSequenceNumber."""
        await self._producer.stop()
        self._producer = self._new_producer()
        await self._producer.start()
        log.info("outbox.producer_restarted")

    def _new_producer(self) -> Producer:
        # Rows were validated when added: the relay needs no schemas.
        return Producer(self.settings.publisher(), telemetry=self.telemetry, registry=SchemaRegistry({}))

    def _failing(self, topic: str, failed: list[tuple[_Row, EventqError]], result: _Round) -> None:
        errors: dict[str, list[_Row]] = {}
        for row, error in failed:
            errors.setdefault(redact(f"{type(error).__name__}: {error}")[:_MAX_ERROR], []).append(row)
            self._metrics.failed(topic, type(error).__qualname__, 1)
        for text, rows in errors.items():
            result.failed.setdefault(text, []).extend(rows)
        delay = self._backoff.failed(topic)
        first = failed[0][1]
        log.warning(
            "outbox.send_failed", topic=topic, events=len(failed), error_type=type(first).__name__,
            error=redact(str(first))[:_MAX_ERROR], retry_in_s=round(delay, 2),
            event_ids=[r.event_id for r, _ in failed[:_SHOWN_IDS]],
        )
        if isinstance(first, (BrokerUnavailable, PublishTimeout)):
            self.status.broker_failed(first, "outbox relay")

    async def _settle(self, conn: asyncpg.Connection, result: _Round) -> None:
        """Remove (or mark) acknowledged rows; note failures; park what cannot be sent."""
        if result.acked:
            statement = table.MARK_PUBLISHED if self.settings.keep_published_s else table.DELETE
            await conn.execute(statement, result.acked, timeout=QUERY_TIMEOUT_S)
        for error, rows in result.failed.items():
            await conn.execute(table.FAILED, [r.id for r in rows], error, timeout=QUERY_TIMEOUT_S)
        for error, rows in result.parked.items():
            await conn.execute(table.PARK, [r.id for r in rows], error, timeout=QUERY_TIMEOUT_S)
            for topic in {r.topic for r in rows}:
                self._metrics.parked(topic, sum(1 for r in rows if r.topic == topic))
            log.error(
                "outbox.parked", events=len(rows), error=error, event_ids=[r.event_id for r in rows[:_SHOWN_IDS]],
                hint="fix the cause, then run 'eventq outbox unpark'",
            )
