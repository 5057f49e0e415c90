"""The kit's broker: topics in memory, and a Producer whose sends land in them.

Only what the consumer pipeline and the producer meet of Kafka is stood in for:
records with offsets per partition, a committed position per group, and the
acknowledgement of a send. Everything above that — validating and encoding events,
batching ``publish`` calls, decoding, routing, retries, dead letters — is eventq's
own code, the same the daemon runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka.partitioner import murmur2

from eventq.errors import TopicNotFound
from eventq.producers.producer import Producer, PublishReport
from eventq.schemas.envelope import RecordParts, record_headers


class Record(NamedTuple):
    """A record in a kit topic: the fields of an aiokafka ``ConsumerRecord`` that eventq reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]  # (Kafka allows a header without a value)


def partition_for(key: bytes | None, partitions: int) -> int:
    """Kafka's default partition of ``key`` (murmur2, as the Java client and aiokafka); keyless: 0.

    A real producer spreads keyless records over the partitions; the kit puts them in
    partition 0, so tests are repeatable.
    """
    if key is None or partitions == 1:
        return 0
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class Topics:
    """Topics in memory: each a list of partitions, each a list of records; and each group's position."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self._logs: dict[str, list[list[Record]]] = {}
        self._positions: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> next offset

    def create(self, *names: str) -> None:
        for name in names:
            self._logs.setdefault(name, [[] for _ in range(self.partitions)])

    def exists(self, name: str) -> bool:
        return name in self._logs

    def append(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]],
        timestamp_ms: int | None = None,
    ) -> Record:
        """Append a record (creating the topic) to its key's partition; the record, with its offset."""
        self.create(topic)
        log = self._logs[topic]
        partition = partition_for(key, len(log))
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        record = Record(topic, partition, len(log[partition]), ts, key, value, list(headers))
        log[partition].append(record)
        return record

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition, in offset order."""
        return [r for partition in self._logs.get(topic, ()) for r in partition]

    def unconsumed(self, group: str, topic: str, limit: int) -> list[list[Record]]:
        """Per partition of ``topic`` with records after ``group``'s position: up to ``limit`` of them."""
        out = []
        for partition, log in enumerate(self._logs.get(topic, ())):
            start = self._positions.get((group, topic, partition), 0)
            if start < len(log):
                out.append(log[start : start + limit])
        return out

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """``group`` finished everything before ``offset``."""
        key = (group, topic, partition)
        self._positions[key] = max(self._positions.get(key, 0), offset)


class KitProducer(Producer):
    """A :class:`~eventq.producers.Producer` whose sends land in kit topics, acknowledged at once.

    ``publish`` validates, encodes and batches exactly as the real one; only the last
    step, the client that meets the broker, is replaced. A topic that does not exist
    in the kit raises :class:`~eventq.errors.TopicNotFound`, as the real one does.
    """

    def __init__(self, topics: Topics, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topics = topics
        self.sent: list[Record] = []
        self._running = False

    def _started(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def _send_records(self, name: str, event_ids: list[str], records: list[RecordParts]) -> PublishReport:
        if not self.topics.exists(name):
            raise TopicNotFound(
                name, "no such topic in this TestKit; declare it: TestKit(app, topics=[...])",
            )
        report = PublishReport(name, event_ids)
        for index, parts in enumerate(records):
            record = self.topics.append(name, parts[0], parts[1], record_headers(parts), parts[2])
            self.sent.append(record)
            report._acknowledged([index], record.partition, record.offset)  # noqa: SLF001 - the send's answer
        return report
