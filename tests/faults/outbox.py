"""The outbox rows' side of a fault run: a service writing the workload through the transactional
outbox, the relay processes that publish it, and what the outbox table holds.

* :func:`write` is the service: several connections (each owning some keys, so per-key
  order is the workload's) commit transactions that add 1–16 events with
  :meth:`eventq.outbox.Outbox.add_many` and insert one business row per event
  (``faults_orders``) in the same transaction. About one transaction in ten adds
  *ghost* events (ids that are not the workload's) and then rolls back. A transaction
  broken by an outage is looked up in ``faults_orders`` once PostgreSQL answers again:
  committed, or retried with the same events, as a service would.
* :func:`relay_pool` is a supervised pool of ``eventq outbox relay`` processes.
* :func:`pending`, :func:`holders`, :func:`wait_empty`, :func:`leftovers` read the outbox
  table and the relays' share locks; :class:`TopicEnds` watches the topic grow (the
  relay faults time their kills with both).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventq.config import KafkaSettings
from eventq.database import is_outage
from eventq.outbox import Outbox
from eventq.outbox.rows import SHARES
from eventq.outbox.table import HOLDERS, HOLDERS_ARGS
from eventq.producers import ProducerSettings
from eventq.schemas import Event
from tests.conftest import partitions_of
from tests.faults.stack import RELAY_COMMAND, REPO, Services, Workers
from tests.faults.workload import EVENT_TYPE, SCHEMAS, PublishLog, Workload, seeded_uuid7

WRITERS = 4
ROLLBACK_SHARE = 0.1  # of the transactions
RELAY_BATCH = 200  # rows per relay round (product default 1000): a backlog takes several rounds
BUSINESS_TABLE = "CREATE TABLE faults_orders (event_id uuid PRIMARY KEY, txn integer NOT NULL)"
_GHOST_MS = int(datetime(2025, 12, 31, tzinfo=UTC).timestamp() * 1000)  # ghost ids' time: before the workload's


@dataclass(frozen=True)
class Txn:
    number: int
    events: tuple[Event, ...]
    rollback: bool

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


@dataclass
class WriteLog(PublishLog):
    """What the writer did; ``acked`` holds the committed ids (read back from ``faults_orders``)."""

    rolled_back: set[str] = field(default_factory=set)
    transactions: Counter[str] = field(default_factory=Counter)  # committed / rolled back / retried / ...

    def summary(self) -> str:
        t = self.transactions
        return (f"writer: {t['committed']} transactions committed ({len(self.acked)} events), "
                f"{t['rolled back']} rolled back ({len(self.rolled_back)} ghost events); broken by an outage "
                f"{t['interrupted']}: found committed {t['found committed']}, retried {t['retried']}, "
                f"were to roll back {t['interrupted'] - t['found committed'] - t['retried']}")  # fmt: skip


def plan(workload: Workload, *, writers: int = WRITERS) -> list[list[Txn]]:
    """Each writer's transactions, from the seed: the workload's events of its keys in order,
    in transactions of 1–16, with a rolled-back transaction of ghosts after about one in ten."""
    rng = random.Random(f"outbox:{workload.seed}")
    by_writer: list[list[Event]] = [[] for _ in range(writers)]
    for event in workload.events:
        by_writer[int((event.key or "k-0").rsplit("-", 1)[1]) % writers].append(event)
    plans: list[list[Txn]] = []
    number = 0
    for events in by_writer:
        txns: list[Txn] = []
        keys = sorted({e.key or "" for e in events})
        i = 0
        while i < len(events):
            size = rng.randint(1, 16)
            number += 1
            txns.append(Txn(number, tuple(events[i : i + size]), rollback=False))
            i += size
            if keys and rng.random() < ROLLBACK_SHARE / (1 - ROLLBACK_SHARE):
                number += 1
                txns.append(Txn(number, _ghosts(rng, keys, rng.randint(1, 16)), rollback=True))
        plans.append(txns)
    return plans


def _ghosts(rng: random.Random, keys: list[str], n: int) -> tuple[Event, ...]:
    out = []
    for _ in range(n):
        key = rng.choice(keys)
        data = {"key": key, "seq": 0, "poison": False, "ghost": True}
        out.append(Event(id=seeded_uuid7(rng, _GHOST_MS), type=EVENT_TYPE, source="eventq-faults", key=key,
                         time=datetime.now(UTC), data=data))  # fmt: skip
    return tuple(out)


class _Rejected(Exception):
    """Raised inside a transaction the service decided to roll back."""


async def write(database: str, topic: str, workload: Workload, *, rate: float, deadline_s: float = 300) -> WriteLog:
    """Commit the workload through the outbox at about ``rate`` events/s (see the module docstring).

    Returns once every workload event is committed exactly once; ``acked`` is then what
    ``faults_orders`` holds, which must be every workload id.
    """
    log = WriteLog()
    started = time.monotonic()
    outbox = Outbox(ProducerSettings(schemas=(SCHEMAS,)))
    plans = plan(workload)
    total = len(workload.events)
    await asyncio.gather(*(
        _writer(database, topic, outbox, txns, log, rate=rate * sum(len(t.events) for t in txns if not t.rollback)
                / max(1, total), started=started, deadline=started + deadline_s)
        for txns in plans
    ))  # fmt: skip
    conn = await _connect(database, time.monotonic() + 60)
    try:
        log.acked = {r[0] for r in await conn.fetch("SELECT event_id::text FROM faults_orders")}
    finally:
        await conn.close()
    log.seconds = time.monotonic() - started
    return log


async def _writer(database: str, topic: str, outbox: Outbox, txns: list[Txn], log: WriteLog, *, rate: float,
                  started: float, deadline: float) -> None:  # fmt: skip
    conn: asyncpg.Connection | None = None
    done = 0
    try:
        for txn in txns:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"outbox writer: transaction {txn.number} not committed in time")
                try:
                    conn = conn or await _connect(database, deadline)
                    async with conn.transaction():
                        await outbox.add_many(conn, txn.events, topic=topic)
                        await conn.execute("INSERT INTO faults_orders (event_id, txn) "
                                           "SELECT unnest($1::uuid[]), $2", txn.ids, txn.number)  # fmt: skip
                        if txn.rollback:
                            raise _Rejected
                    log.transactions["committed"] += 1
                    break
                except _Rejected:
                    log.transactions["rolled back"] += 1
                    log.rolled_back.update(txn.ids)
                    break
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    log.errors.append(f"{type(exc).__name__}: {exc}")
                    log.transactions["interrupted"] += 1
                    if conn is not None:
                        conn.terminate()
                    conn = None
                    if txn.rollback:  # never asked to commit: rolled back whatever happened
                        log.transactions["rolled back"] += 1
                        log.rolled_back.update(txn.ids)
                        break
                    conn = await _connect(database, deadline)
                    found = await conn.fetchval("SELECT count(*) FROM faults_orders WHERE txn = $1", txn.number)
                    if found == len(txn.events):
                        log.transactions["found committed"] += 1
                        log.transactions["committed"] += 1
                        break
                    log.transactions["retried"] += 1
            if not txn.rollback:
                done += len(txn.events)
                await asyncio.sleep(max(0.0, started + done / rate - time.monotonic()))
    finally:
        if conn is not None:
            conn.terminate()


async def _connect(database: str, deadline: float) -> asyncpg.Connection:
    """A connection, waiting out an outage until ``deadline``."""
    while True:
        try:
            return await asyncpg.connect(database, timeout=5)
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def relay_pool(services: Services, database: str, logs: Path, *, size: int) -> Workers:
    """``size`` supervised ``eventq outbox relay`` processes: product defaults, but rounds of
    :data:`RELAY_BATCH` rows and timeouts as short as the consumers' (harness.worker_env)."""
    env = {
        "EVENTQ_BOOTSTRAP_SERVERS": services.bootstrap,
        "EVENTQ_DATABASE_URL": database,
        "EVENTQ_OUTBOX_BATCH_SIZE": str(RELAY_BATCH),
        "EVENTQ_OUTBOX_BACKOFF_INITIAL_S": "0.2",
        "EVENTQ_OUTBOX_BACKOFF_MAX_S": "2",
        "EVENTQ_DELIVERY_TIMEOUT_S": "20",
        "PYTHONPATH": str(REPO),
    }
    return Workers(env=env, logs=logs, size=size, command=RELAY_COMMAND, name="relay",
                   ready=b'"event": "outbox.relay_started"')  # fmt: skip


class TopicEnds:
    """The sum of a topic's end offsets, asked of the broker on one long-lived client (a few ms a call)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
        self._kafka = kafka
        self._topic = topic
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        self._partitions = [TopicPartition(self._topic, p) for p in await partitions_of(self._kafka, self._topic)]
        await self._consumer.start()

    async def total(self) -> int:
        return int(sum((await self._consumer.end_offsets(self._partitions)).values()))

    async def stop(self) -> None:
        await self._consumer.stop()


async def query(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``sql``'s rows on a new connection (raises if PostgreSQL does not answer)."""
    conn = await asyncpg.connect(database, timeout=5)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args, timeout=10)
        return rows
    finally:
        await conn.close()


async def pending(database: str) -> int:
    """Rows in the outbox (pending or parked: the relays delete what they published)."""
    [row] = await query(database, "SELECT count(*) FROM eventq_outbox")
    return int(row[0])


async def holders(database: str) -> dict[int, list[int]]:
    """Relay OS pid (from its connection's application name) -> the shares it holds, from pg_locks."""
    held: dict[int, list[int]] = {}
    for r in await query(database, HOLDERS, *HOLDERS_ARGS):
        shares = held.setdefault(int((r["application_name"] or ":0").rsplit(":", 1)[1]), [])
        if r["share"] < SHARES:
            shares.append(r["share"])
    return held


async def wait_rows(database: str, rows: int, *, until: asyncio.Future[Any], timeout: float = 60) -> int:
    """The outbox's row count once it is ``rows`` or more; TimeoutError if ``until`` is done first
    (the writer finished) or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (found := await pending(database)) < rows:
        if until.done() or time.monotonic() > deadline:
            raise TimeoutError(f"the outbox never held {rows} rows for the relays to start on (at most {found})")
        await asyncio.sleep(0.05)
    return found


async def wait_empty(database: str, timeout: float) -> float | None:
    """Seconds until the outbox table is empty; None if it is not after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if await pending(database) == 0:
                return time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - PostgreSQL still recovering answers later
            if not is_outage(exc):
                raise
        await asyncio.sleep(0.5)
    return None


async def leftovers(database: str) -> str:
    """What is still in the outbox, per state, with the last error (for a failed P9)."""
    rows = await query(database, "SELECT (parked_at IS NOT NULL) AS parked, count(*), max(attempts), "
                                 "max(last_error) FROM eventq_outbox GROUP BY 1")  # fmt: skip
    return "; ".join(f"{'parked' if r[0] else 'pending'} {r[1]} (attempts up to {r[2]}, last error {r[3]!r})"
                     for r in rows) or "nothing"  # fmt: skip


def log_events(pool: Workers) -> Counter[str]:
    """How often each warning-or-worse event appears in the pool's logs (non-JSON lines as ``<text>``)."""
    seen: Counter[str] = Counter()
    for path in sorted(pool.logs.glob(f"{pool.name}-*.log")):
        for line in path.read_bytes().decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    seen["<text>"] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                seen[str(entry.get("event"))[:80]] += 1  # aiokafka's lines carry their message as the event
    return seen
