"""The fault suite's workload: N events with per-key sequence numbers, a few poison events
and a few malformed records, all derived from a seed, and a publisher that re-sends until
every event is acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from eventq.config import KafkaSettings
from eventq.errors import PublishError
from eventq.producers import Producer, ProducerSettings
from eventq.schemas import Event

EVENT_TYPE = "faults.item.v1"
SCHEMAS = str(Path(__file__).parent / "schemas")
"""The folder with the workload's JSON Schema (EVENTQ_SCHEMAS for producer and daemons)."""
_BASE_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def seeded_uuid7(rng: random.Random, ms: int) -> str:
    """A version-7 UUID whose time is ``ms`` and whose random bits come from ``rng``."""
    value = (ms & (2**48 - 1)) << 80 | rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class Workload:
    """What one fault run publishes; the same seed gives the same ids, keys and poison."""

    seed: int
    events: tuple[Event, ...]
    poison: frozenset[str]  # ids whose handler fails until the fix is deployed
    malformed: tuple[bytes, ...]  # record values that are not events at all
    keys: int

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(e.id for e in self.events)


def build(seed: int, n: int, *, keys: int = 60, poison: int | None = None, malformed: int = 2) -> Workload:
    """``n`` events over ``keys`` keys, sequence numbers per key, ``poison`` of them poison."""
    rng = random.Random(f"workload:{seed}")
    poison_count = max(3, n // 2000) if poison is None else poison
    poison_at = set(rng.sample(range(n), poison_count))
    seqs: dict[str, int] = {}
    events = []
    for i in range(n):
        key = f"k-{rng.randrange(keys):03d}"
        seq = seqs.get(key, 0)
        seqs[key] = seq + 1
        events.append(
            Event(
                id=seeded_uuid7(rng, _BASE_MS + i),
                type=EVENT_TYPE,
                source="eventq-faults",
                key=key,
                time=datetime.now(UTC),
                data={"key": key, "seq": seq, "poison": i in poison_at, "pad": "x" * 64},
            )
        )
    bad = tuple(b"\x00not an event " + str(rng.getrandbits(64)).encode() for _ in range(malformed))
    return Workload(
        seed=seed,
        events=tuple(events),
        poison=frozenset(events[i].id for i in poison_at),
        malformed=bad,
        keys=keys,
    )


@dataclass
class PublishLog:
    """What the publisher saw: acknowledged ids, how many sends failed and were re-sent."""

    acked: set[str] = field(default_factory=set)
    resent: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def publish(
    kafka: KafkaSettings, topic: str, workload: Workload, *, rate: float, chunk: int = 200, deadline_s: float = 300
) -> PublishLog:
    """Publish the workload at about ``rate`` events/s in chunks, in order.

    A chunk with failures is re-sent (same events, same ids) after a pause until every event
    of it is acknowledged, as a service honouring at-least-once publishing would; the next
    chunk waits for that, so per-key order holds unless a send fails partway.
    """
    log = PublishLog()
    started = time.monotonic()
    await _publish_malformed(kafka, topic, workload.malformed)
    settings = ProducerSettings(kafka=kafka, delivery_timeout_s=20.0, schemas=(SCHEMAS,))
    async with Producer(settings) as producer:
        events = list(workload.events)
        for first in range(0, len(events), chunk):
            pending = events[first : first + chunk]
            while pending:
                if time.monotonic() - started > deadline_s:
                    raise TimeoutError(f"publisher: {len(pending)} events still unacknowledged after {deadline_s} s")
                try:
                    report = await producer.publish_many(pending, topic=topic)
                    failed = {f.event_id for f in report.failed}
                except PublishError as exc:  # broker trouble; anything else is a bug
                    failed = {e.id for e in pending}
                    log.errors.append(f"{type(exc).__name__}: {exc}")
                log.acked.update(e.id for e in pending if e.id not in failed)
                pending = [e for e in pending if e.id in failed]
                if pending:
                    log.resent += len(pending)
                    await asyncio.sleep(0.5)
            target = started + (first + chunk) / rate
            await asyncio.sleep(max(0.0, target - time.monotonic()))
    log.seconds = time.monotonic() - started
    return log


async def _publish_malformed(kafka: KafkaSettings, topic: str, values: tuple[bytes, ...]) -> None:
    # Malformed records cannot be made with eventq's producer, which only sends valid events.
    raw = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await raw.start()
    try:
        for i, value in enumerate(values):
            await raw.send_and_wait(topic, value, key=f"bad-{i}".encode())
    finally:
        await raw.stop()
