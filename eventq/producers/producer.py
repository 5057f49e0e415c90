"""Publishing events to Kafka.

Guarantees:

- An event is reported :class:`Published` only after the broker acknowledged it
  with ``acks=all`` (written to every in-sync replica); otherwise the caller gets an
  error (``publish``) or a :class:`Failed` outcome (``publish_many``).
- The producer is idempotent: its own retries never duplicate or reorder events
  within a partition. A caller that re-publishes after a timeout may duplicate an
  event; consumers drop the copy by its event id.
- Events with the same partition key go to the same partition (Kafka's murmur2
  partitioner, identical for ``publish`` and ``publish_many``) and are written in
  the order given.
- Nothing invalid is sent: every payload is validated against its event type's
  JSON Schema first, and ``publish_many`` validates the whole sequence before
  sending any of it.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka import errors as ke
from aiokafka.partitioner import murmur2

from eventq.errors import BrokerUnavailable, ConfigError, EventError, EventqError, TopicNotFound
from eventq.kafka import stop_producer, topic_refusal, translate
from eventq.producers.deadlines import AckDeadlines
from eventq.producers.settings import ProducerSettings
from eventq.schemas.envelope import Event, RecordParts, encode_parts, record_headers
from eventq.schemas.registry import SchemaRegistry
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.telemetry.metrics import ProducerMetrics

log = structlog.get_logger("eventq.producer")

# How long a topic missing from the metadata is re-checked before TopicNotFound.
_TOPIC_GRACE_S = 2.0
# Room for record-batch and request framing on top of one event's bytes.
_FRAMING_BYTES = 16 * 1024


class Published(NamedTuple):
    """Where an acknowledged event landed."""

    event_id: str
    topic: str
    partition: int
    offset: int


class Failed(NamedTuple):
    """An event the broker did not acknowledge, and why."""

    event_id: str
    topic: str
    error: EventqError


Outcome = Published | Failed


class PublishReport:
    """One outcome per event given to ``publish_many``, in the order given.

    Kept compactly (one entry per acknowledged batch, failures in a dict) and turned
    into :class:`Published`/:class:`Failed` objects only when read, so checking
    ``ok`` on a large report costs nothing per event.
    """

    __slots__ = ("topic", "_ids", "_batches", "_answered", "_partitions", "_offsets", "_errors")

    def __init__(self, topic: str, event_ids: list[str]) -> None:
        self.topic = topic
        self._ids = event_ids
        # acknowledged batches (indexes, partition, base offset), spread per event on first read
        self._batches: list[tuple[list[int], int, int]] = []
        self._answered = 0
        self._partitions: array[int] | None = None
        self._offsets: array[int] | None = None
        self._errors: dict[int, EventqError] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Published or Failed for each event, in input order."""
        partitions, offsets = self._spread()
        topic, ids, errors = self.topic, self._ids, self._errors
        return tuple(
            Published(ids[i], topic, partitions[i], offsets[i]) if i not in errors else Failed(ids[i], topic, errors[i])
            for i in range(len(ids))
        )

    @property
    def published(self) -> list[Published]:
        partitions, offsets = self._spread()
        topic, ids = self.topic, self._ids
        return [Published(ids[i], topic, partitions[i], offsets[i]) for i in range(len(ids)) if i not in self._errors]

    @property
    def failed(self) -> list[Failed]:
        return [Failed(self._ids[i], self.topic, error) for i, error in sorted(self._errors.items())]

    @property
    def ok(self) -> bool:
        """True when every event was acknowledged."""
        return not self._errors

    def errors_by_index(self) -> dict[int, EventqError]:
        """Each failed event's error, by its index in the order given (empty when all were acknowledged)."""
        return dict(self._errors)

    def raise_for_failures(self) -> None:
        """Raise the first failure's error (with a count of all failures) if any."""
        if self._errors:
            error = self._errors[min(self._errors)]
            error.add_note(f"{len(self._errors)} of {len(self._ids)} events were not published")
            raise error

    def _acknowledged(self, indexes: list[int], partition: int, base_offset: int) -> None:
        # Each index is answered exactly once (acknowledged or failed): the sender
        # gives every event to one batch, and a batch is answered once.
        self._batches.append((indexes, partition, base_offset))
        self._answered += len(indexes)

    def _fail(self, indexes: Iterable[int], error: EventqError) -> None:
        for i in indexes:
            self._errors[i] = error

    def _unresolved(self) -> int:
        return len(self._ids) - self._answered - len(self._errors)

    def _spread(self) -> tuple[array[int], array[int]]:
        """Per-event partitions and offsets (offset -1: no answer), filled from the batches on first use."""
        partitions, offsets = self._partitions, self._offsets
        if partitions is None or offsets is None:
            partitions = self._partitions = array("i", [0]) * len(self._ids)
            offsets = self._offsets = array("q", [-1]) * len(self._ids)
        for indexes, partition, base_offset in self._batches:
            for position, i in enumerate(indexes):
                partitions[i] = partition
                offsets[i] = base_offset + position
        self._batches = []
        return partitions, offsets

    def _outcome(self, i: int) -> Outcome:
        error = self._errors.get(i)
        if error is not None:
            return Failed(self._ids[i], self.topic, error)
        partitions, offsets = self._spread()
        return Published(self._ids[i], self.topic, partitions[i], offsets[i])


class Producer:
    """Publishes :class:`~eventq.schemas.envelope.Event` objects.

    Use as ``async with Producer(settings) as producer:``; ``stop()`` waits up to
    ``delivery_timeout_s`` for events already handed to Kafka to be acknowledged, then
    fails the rest. Construction loads the schemas (ConfigError if a source is bad).
    Without ``settings`` it uses :meth:`ProducerSettings.from_env` (the ``EVENTQ_*`` variables).

    With tracing on, each ``publish`` makes a ``send {topic}`` span and each event of
    ``publish_many`` a ``create {topic}`` span, whose context travels in the record's
    ``traceparent`` header (:mod:`eventq.telemetry.tracing`); with it off, only an
    active span context is propagated.
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        telemetry: Telemetry | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ProducerSettings.from_env()
        telemetry = telemetry or Telemetry()
        self._tracing = tr.Tracing(telemetry.tracer_provider)
        self._metrics = ProducerMetrics(telemetry.meter_provider)
        # Loaded here, not in start(): a bad schema source fails at construction, and
        # callers (the CLI) can validate an event before any connection is made. A caller
        # that already loaded them (the consumer daemon) passes its registry instead.
        self.registry = registry if registry is not None else SchemaRegistry.load(self.settings.schemas)
        self._aio: AIOKafkaProducer | None = None
        self._known_topics: set[str] = set()
        self._acks = AckDeadlines(self.settings.delivery_timeout_s)
        # publish() calls waiting for the next flush, per topic, and the flushes running
        self._queued: dict[str, list[tuple[str, RecordParts, asyncio.Future[Outcome]]]] = {}
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._queueing: dict[str, asyncio.Lock] = {}  # each topic's turn to queue batches (_send_records)

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect; raises BrokerUnavailable if no broker answers."""
        s = self.settings
        aio = AIOKafkaProducer(
            **s.kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            max_batch_size=s.max_batch_bytes,
            max_request_size=max(s.max_batch_bytes, s.max_event_bytes) + _FRAMING_BYTES,
            request_timeout_ms=int(s.delivery_timeout_s * 1000),
            compression_type=s.compression,
        )
        try:
            await aio.start()
        except Exception as exc:
            await aio.stop()
            raise translate(exc, topic=s.default_topic or "", settings=s.kafka) from exc
        self._aio = aio
        log.info("producer.started", bootstrap_servers=s.kafka.bootstrap_servers, client_id=s.kafka.client_id)

    async def stop(self) -> None:
        """Wait up to ``delivery_timeout_s`` for pending events, then disconnect. Idempotent.

        Events still unacknowledged after that are abandoned (their callers already
        got a PublishTimeout or a Failed outcome) and a warning is logged.
        """
        if self._aio is not None and self._flush_scheduled:
            self._start_flushes()
        if self._flushes:  # each ends within the delivery timeout
            await asyncio.wait(set(self._flushes))
        aio, self._aio = self._aio, None
        if aio is not None:
            flushed = await stop_producer(aio, self.settings.delivery_timeout_s)
            await self._acks.close()
            if not flushed:
                log.warning("producer.unflushed_abandoned", client_id=self.settings.kafka.client_id)
            log.info("producer.stopped", client_id=self.settings.kafka.client_id)

    def _started(self) -> bool:
        return self._aio is not None

    async def publish(self, event: Event, *, topic: str | None = None) -> Published:
        """Publish one event and wait for the broker's acknowledgement.

        Raises an :class:`~eventq.errors.EventError` before sending anything if the
        event is invalid, or a :class:`~eventq.errors.PublishError` if the broker did
        not acknowledge it. Calls made in the same turn of the event loop are sent
        together as record batches, in call order (so many concurrent ``publish``
        calls cost little more than one ``publish_many``). A caller cancelled after
        the call began may still have its event published.
        """
        name = self._topic(topic)
        self.registry.validate(event.type, event.data)
        if not self._started():
            raise RuntimeError("Producer is not started; use 'async with Producer(...)'")
        span = self._tracing.send(name, event) if self._tracing.enabled else None
        try:
            record = encode_parts(
                event, max_event_bytes=self.settings.max_event_bytes, trace_headers=tr.trace_headers(span)
            )
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[Outcome] = loop.create_future()
            self._queued.setdefault(name, []).append((event.id, record, waiter))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._start_flushes)
            outcome = await waiter
        except BaseException as exc:
            tr.end_failed(span, exc)
            raise
        if span is not None:
            _end_send(span, outcome)
        if isinstance(outcome, Failed):
            raise outcome.error
        return outcome

    async def publish_many(self, events: Iterable[Event], *, topic: str | None = None) -> PublishReport:
        """Publish a sequence of events with the batch API; report each outcome.

        Every event is validated and encoded first: if any is invalid, its error is
        raised (with a note naming its index) and nothing is sent. Events are then
        grouped by partition, keeping their order, and each partition's records are
        sent as few record batches as fit ``max_batch_bytes``. Events without a key
        all go to one randomly chosen available partition (sticky, like Kafka's own
        clients). A failed batch fails only its own events.
        """
        name = self._topic(topic)
        items = list(events)
        created: list[Any] | None = [] if self._tracing.enabled else None
        records = self._encode_all(name, items, created)
        if not created:
            return await self._send_records(name, [e.id for e in items], records)
        send = self._tracing.send_batch(name, created)
        return await self._send_traced(send, name, [e.id for e in items], records)

    async def send_encoded(
        self, topic: str, event_ids: list[str], records: list[RecordParts], *, creations: Sequence[Any] = ()
    ) -> PublishReport:
        """Send events validated and encoded earlier (an outbox relay's rows); report each outcome.

        Like :meth:`publish_many` after its validation: grouped by partition in the order
        given, a failed batch failing only its own events. With tracing on, one ``send
        {topic}`` span linked to ``creations`` (the events' stored creation contexts).
        """
        if not self._tracing.enabled:
            return await self._send_records(topic, event_ids, records)
        return await self._send_traced(self._tracing.relay_send(topic, creations), topic, event_ids, records)

    async def _send_traced(
        self, send: Any, topic: str, event_ids: list[str], records: list[RecordParts]
    ) -> PublishReport:
        """Send under the batch's ``send`` span, which says how many failed and is ended here."""
        try:
            report = await self._send_records(topic, event_ids, records)
        except BaseException as exc:
            tr.end_failed(send, exc)
            raise
        if not report.ok:
            failed = report.failed
            tr.fail(send, f"{len(failed)} of {len(report)} events were not published",
                    error_type=type(failed[0].error).__qualname__)
        send.end()
        return report

    def _encode_all(self, topic: str, items: list[Event], created: list[Any] | None) -> list[RecordParts]:
        """Validate and encode every event; with ``created`` (tracing on) each under its own ``create`` span."""
        validate = self.registry.validate
        max_bytes = self.settings.max_event_bytes
        records: list[RecordParts] = []
        if created is None:  # the lean loop: no span per event
            shared = tr.trace_headers()
            append = records.append
            try:
                for event in items:
                    validate(event.type, event.data)
                    append(encode_parts(event, max_event_bytes=max_bytes, trace_headers=shared))
            except EventError as exc:
                index = len(records)
                event = items[index]
                exc.add_note(f"publish_many: events[{index}] (type {event.type!r}, id {event.id}); nothing was sent")
                raise
            return records
        for index, event in enumerate(items):
            span = self._tracing.create(topic, event)
            try:
                validate(event.type, event.data)
                records.append(encode_parts(event, max_event_bytes=max_bytes, trace_headers=tr.trace_headers(span)))
            except EventError as exc:
                exc.add_note(f"publish_many: events[{index}] (type {event.type!r}, id {event.id}); nothing was sent")
                tr.fail(span, exc)
                raise
            finally:
                span.end()
                created.append(span)
        return records

    def _start_flushes(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for topic, items in queued.items():
            task = asyncio.get_running_loop().create_task(self._flush(topic, items))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, topic: str, items: list[tuple[str, RecordParts, asyncio.Future[Outcome]]]) -> None:
        """Send the records of queued ``publish`` calls and answer each caller."""
        try:
            report = await self._send_records(topic, [i for i, _, _ in items], [r for _, r, _ in items])
        except Exception as exc:  # the topic check failed: every caller gets the error
            for _, _, waiter in items:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, _, waiter), outcome in zip(items, report.outcomes, strict=True):
            if not waiter.done():  # a cancelled caller no longer waits
                waiter.set_result(outcome)

    async def _send_records(self, name: str, event_ids: list[str], records: list[RecordParts]) -> PublishReport:
        report = PublishReport(name, event_ids)
        if not records:
            return report
        started = time.perf_counter()
        deadline = self._acks.deadline()
        # Calls queue their batches one at a time per topic, in call order (they get here in
        # that order, before any await): a later call, or one whose metadata came back first,
        # never overtakes an earlier one, so events of a key keep their order across calls.
        # Answers are awaited outside the turn.
        async with self._queueing.setdefault(name, asyncio.Lock()):
            try:
                aio = await self._ready(name)
            except EventqError as exc:  # nothing was sent: every event failed for this reason
                self._metrics.sent(name, [exc] * len(records), len(records), time.perf_counter() - started)
                raise
            by_partition = self._group_by_partition(aio, name, records)
            queued = await asyncio.gather(
                *(
                    self._queue_partition(aio, name, partition, indexes, records, deadline)
                    for partition, indexes in by_partition.items()
                )
            )
        await asyncio.gather(
            *(
                self._collect_partition(name, partition, indexes, answer, report, deadline)
                for (partition, indexes), answer in zip(by_partition.items(), queued, strict=True)
            )
        )
        if report._unresolved():  # every index belongs to exactly one partition's task
            raise RuntimeError("publish_many left an event without an outcome; this is a bug in eventq")
        self._metrics.sent(name, report._errors.values(), len(records), time.perf_counter() - started)
        return report

    def _topic(self, topic: str | None) -> str:
        name = topic or self.settings.default_topic
        if not name:
            raise ConfigError("no topic given; pass topic=... or set default_topic (EVENTQ_TOPIC)")
        return name

    async def _ready(self, topic: str) -> AIOKafkaProducer:
        """The started client, after checking once that ``topic`` exists."""
        aio = self._aio
        if aio is None:
            raise RuntimeError("Producer is not started; use 'async with Producer(...)'")
        if topic in self._known_topics:
            return aio
        # aiokafka would wait the whole delivery timeout for a missing topic; asking
        # for the cluster's metadata once answers "does it exist" right away.
        if aio.client.cluster.partitions_for_topic(topic) is None:
            await self._require_topic(aio, topic)
        try:
            await asyncio.wait_for(aio.partitions_for(topic), self.settings.delivery_timeout_s)
        except Exception as exc:
            raise translate(exc, topic=topic, settings=self.settings.kafka) from exc
        self._known_topics.add(topic)
        return aio

    async def _require_topic(self, aio: AIOKafkaProducer, topic: str) -> None:
        """Raise TopicNotFound unless the cluster's metadata lists ``topic``.

        A topic created a moment ago may be missing from a broker's metadata for a
        short while, so the answer "missing" is confirmed for up to two seconds.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + min(_TOPIC_GRACE_S, self.settings.delivery_timeout_s)
        while True:
            try:
                metadata = await aio.client.fetch_all_metadata()
            except ke.KafkaError as exc:
                raise BrokerUnavailable(
                    topic, f"cannot fetch metadata from {self.settings.kafka.bootstrap_servers}"
                ) from exc
            if topic in metadata.topics():
                return
            if loop.time() >= give_up:
                # A full listing leaves out topics this principal may not Describe: ask for
                # this one by name, so "not authorised" is not reported as "missing".
                refusal = await topic_refusal(aio.client, topic)
                if refusal is not None:
                    raise translate(refusal, topic=topic, settings=self.settings.kafka)
                raise TopicNotFound(topic, "the topic does not exist; create it first (eventq topics create)")
            await asyncio.sleep(0.2)

    @staticmethod
    def _group_by_partition(
        aio: AIOKafkaProducer, topic: str, records: Sequence[RecordParts]
    ) -> dict[int, list[int]]:
        cluster = aio.client.cluster
        partitions = sorted(cluster.partitions_for_topic(topic))
        available = list(cluster.available_partitions_for_topic(topic)) or partitions
        sticky = random.choice(available)
        count = len(partitions)
        by_key: dict[bytes | None, list[int]] = {}  # each key's partition group (None: keyless)
        groups: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            key = record[0]
            members = by_key.get(key)
            if members is None:
                partition = sticky if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % count]
                members = groups.get(partition)
                if members is None:
                    members = groups[partition] = []
                by_key[key] = members
            members.append(index)
        return groups

    async def _queue_partition(
        self,
        aio: AIOKafkaProducer,
        topic: str,
        partition: int,
        indexes: list[int],
        records: Sequence[RecordParts],
        deadline: float,
    ) -> tuple[list[tuple[asyncio.Future[Any], list[int]]], EventqError | None]:
        """Queue one partition's records in aiokafka as batches: (each batch's future and members, why the rest
        was not queued)."""
        submitted: list[tuple[asyncio.Future[Any], list[int]]] = []
        members: list[int] = []
        batch = aio.create_batch()
        for index in indexes:
            record = records[index]
            headers = record_headers(record)
            if batch.append(key=record[0], value=record[1], timestamp=record[2], headers=headers) is None:
                try:
                    submitted.append((await self._submit(aio, batch, topic, partition, deadline), members))
                except EventqError as exc:
                    return submitted, exc
                batch, members = aio.create_batch(), []
                batch.append(key=record[0], value=record[1], timestamp=record[2], headers=headers)
            members.append(index)
        if members:
            try:
                submitted.append((await self._submit(aio, batch, topic, partition, deadline), members))
            except EventqError as exc:
                return submitted, exc
        return submitted, None

    async def _collect_partition(
        self,
        topic: str,
        partition: int,
        indexes: list[int],
        queued: tuple[list[tuple[asyncio.Future[Any], list[int]]], EventqError | None],
        report: PublishReport,
        deadline: float,
    ) -> None:
        """Wait for the broker's answer to each queued batch and note every event's outcome."""
        submitted, failure = queued
        for future, batch_members in submitted:
            try:
                metadata = await self._acks.wait(future, deadline)
            except Exception as exc:
                report._fail(batch_members, translate(exc, topic=topic, settings=self.settings.kafka))
            else:
                report._acknowledged(batch_members, partition, metadata.offset)
        if failure is not None:  # the events of no submitted batch failed for this reason
            done = {i for _, batch_members in submitted for i in batch_members}
            report._fail((i for i in indexes if i not in done), failure)

    async def _submit(
        self, aio: AIOKafkaProducer, batch: Any, topic: str, partition: int, deadline: float
    ) -> asyncio.Future[Any]:
        """Queue a closed batch in aiokafka; PublishTimeout only once ``deadline`` has passed.

        aiokafka 0.14's ``add_batch`` subtracts the time since it began on every turn of its
        wait for a free slot (its ``start`` is set once, before the loop), so a batch queued
        behind a few dozen others for its partition gives up within seconds instead of
        ``request_timeout_ms`` (3,000 ``publish`` calls in separate loop turns: 2,520 failed
        in 7 s). Its timeout means the batch was not queued, so it is queued again, waiting
        at most until the caller's deadline.
        """
        batch.close()
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise ke.KafkaTimeoutError("no room for the batch before the delivery timeout")
                # (Cancelling it is safe: a batch is appended and returned with no await between.)
                future: asyncio.Future[Any] = await asyncio.wait_for(
                    aio.send_batch(batch, topic, partition=partition), remaining
                )
            except (ke.KafkaTimeoutError, TimeoutError) as exc:
                if loop.time() < deadline:
                    continue
                raise translate(ke.KafkaTimeoutError(str(exc)), topic=topic, settings=self.settings.kafka) from exc
            except Exception as exc:
                raise translate(exc, topic=topic, settings=self.settings.kafka) from exc
            return future


def _end_send(span: Any, outcome: Outcome) -> None:
    if isinstance(outcome, Failed):
        tr.fail(span, outcome.error)
    else:
        span.set_attribute(tr.PARTITION, str(outcome.partition))
        span.set_attribute(tr.OFFSET, outcome.offset)
    span.end()
