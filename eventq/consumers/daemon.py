"""The consumer daemon: fetch a batch, handle, record, commit — and keep going.

Guarantees (each proven by a test against the real broker and database):

- **Handle first, record second, commit last.** A partition's offset is committed
  only after every record before it has its ``processed_events`` row written or its
  dead letter acknowledged by the broker. A crash at any point loses nothing: the
  records after the last commit are delivered again.
- **Redelivered events skip their handler.** One query per fetched batch finds the
  events the group already finished.
- **Partitions are independent.** Each partition's slice of a batch runs as its own
  task; a slow or retrying partition is not fetched again until its slice is done,
  while the others keep being fetched and processed.
- **Nothing is skipped.** A slice that fails unexpectedly rewinds its partition to the
  slice's first offset; a dead letter that cannot be published is retried until it
  is (the partition waits; its offset does not move past it).
- **Outages pause, not crash.** While PostgreSQL or Kafka is unreachable the daemon
  waits with back-off, logs once when the state changes, and resumes.
- **Stop and revocation commit.** ``stop()`` stops fetching, lets in-flight slices
  finish within ``shutdown_grace_s`` (abandoning the rest uncommitted), commits and
  leaves the group; revoked partitions get the same treatment before the rebalance
  completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as ke
from opentelemetry import trace
from opentelemetry.trace import Span

from eventq.consumers import store
from eventq.consumers.app import App
from eventq.consumers.committer import Committer, Recorder
from eventq.consumers.deadletter import HEADROOM_BYTES, DeadLetterSink, dead_letter_headers
from eventq.consumers.health import HealthServer, Status, with_database
from eventq.consumers.hooks import Hooks
from eventq.consumers.probes import DatabaseProbe, Prober
from eventq.consumers.processor import Processor
from eventq.consumers.retrytopics import origin_of, retry_topic
from eventq.consumers.settings import ConsumerSettings
from eventq.consumers.slices import Interrupt, Item, SliceResult, decode_items
from eventq.errors import ConfigError, ConsumerError, DatabaseUnavailable, EventqError
from eventq.kafka import check_group_access, create_topics, explain, max_message_bytes, topic_shapes
from eventq.kafka import consumer as kafka_consumer
from eventq.producers.producer import Producer
from eventq.schemas.registry import SchemaRegistry
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.telemetry.logs import bounded
from eventq.telemetry.metrics import ConsumerMetrics
from eventq.wire import DLT_TRACEPARENT

log = structlog.get_logger("eventq.consumer")

_ALL_BUSY_WAIT_S = 1.0  # all partitions busy this long → pause them and poll, to stay in the group


# Refusals no retry can mend (a missing ACL): the daemon stops with the cause instead.
_REFUSED = (ke.GroupAuthorizationFailedError, ke.TopicAuthorizationFailedError, ke.ClusterAuthorizationFailedError)


class Consumer:
    """A consumer daemon for one :class:`App` (one consumer group).

    ``await consumer.run()`` starts it and returns after :meth:`stop` (or, with
    ``until_idle=True``, once every assigned partition is processed up to its end).
    Startup problems raise :class:`~eventq.errors.ConsumerError`,
    :class:`~eventq.errors.DatabaseUnavailable` or :class:`~eventq.errors.ConfigError`.

    It reports to ``telemetry``'s providers (default: the global ones): spans per
    slice and per event (:mod:`eventq.telemetry.tracing`), metrics per slice and the
    lag per partition (:mod:`eventq.telemetry.metrics`), served for Prometheus at
    ``/metrics`` on the health port.
    """

    def __init__(
        self,
        app: App,
        settings: ConsumerSettings | None = None,
        *,
        hooks: Hooks | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.app = app
        self.settings = settings = settings or ConsumerSettings.from_env()
        self.group = settings.group_id or app.name
        self.topics = settings.topics or app.topics
        if not self.topics:
            raise ConfigError(
                f"no topics to consume for app {app.name!r}; pass App(..., topics=[...]) or set EVENTQ_TOPICS"
            )
        if not app.handlers:
            raise ConfigError(f"app {app.name!r} has no handlers; register one with @app.handler('type.v1')")
        self.registry = SchemaRegistry.load(app.schemas + settings.schemas, inline=app.inline_schemas)
        self.hooks = hooks or Hooks()
        self.telemetry = telemetry = telemetry or Telemetry()
        self._tracing = tr.Tracing(telemetry.tracer_provider)
        self._metrics = ConsumerMetrics(telemetry.meter_provider, self.group)
        self.status = Status()
        self.health: HealthServer | None = None
        self._prober: Prober | None = None
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: Any = None
        self._sink = DeadLetterSink(settings.kafka, timeout_s=settings.dead_letter_timeout_s)
        # Follow-up events are validated by the daemon's registry (the App's inline schemas too): loaded once.
        self._producer = Producer(settings.producer_for(app.schemas), telemetry=telemetry, registry=self.registry)
        self._processor: Processor | None = None
        self._slices: dict[TopicPartition, asyncio.Task[None]] = {}
        self._interrupts: dict[TopicPartition, Interrupt] = {}
        self._paused: set[TopicPartition] = set()
        self._slice_done = asyncio.Event()
        self._committer: Committer | None = None
        self._recorder: Recorder | None = None
        self._retry_topics: frozenset[str] = frozenset()
        self._first_fetched: dict[TopicPartition, int] = {}  # per partition, since assigned (for the lag)
        self._markers_checked = 0.0  # when _commit_past_markers last looked

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler); :meth:`run` then returns.

        Running slices finish the handler they are in and start no other; what is
        finished is recorded and committed, the rest is delivered again later.
        """
        self._stopping.set()
        for interrupt in self._interrupts.values():
            interrupt.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Start, process until stopped (or idle), then shut down cleanly."""
        try:
            await self._start()
        except BaseException:
            await self._close_clients()  # whatever had started by then
            raise
        ticker = asyncio.create_task(self._tick(), name="eventq-liveness")
        try:
            await self._fetch_loop(until_idle=until_idle)
        finally:
            ticker.cancel()
            await self._shutdown()

    async def _tick(self) -> None:
        # Liveness means the event loop turns; the fetch loop itself may rightly wait
        # (a rebalance drains revoked partitions for up to shutdown_grace_s).
        while True:
            self.status.beat()
            self._metrics.lag(self._lag())
            await asyncio.sleep(1.0)

    async def _start(self) -> None:
        s = self.settings
        db = s.database
        try:
            self._pool = await asyncpg.create_pool(
                db.url, min_size=2, max_size=s.pool_size, timeout=db.connect_timeout_s
            )
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            raise DatabaseUnavailable(db.safe_url, f"{type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseUnavailable(db.safe_url, f"{type(exc).__name__}: {exc}", retriable=False) from exc
        if await self._pool.fetchval("SELECT to_regclass('processed_events')") is None:
            raise ConsumerError(
                f"the database at {db.safe_url} has no processed_events table; run 'eventq db migrate' "
                "(or eventq consume --migrate)"
            )
        await self._start_kafka()
        self._processor = Processor(
            app=self.app, settings=s, group=self.group, producer=self._producer, pool=self._pool, status=self.status,
            tracing=self._tracing,
        )
        self._processor.retry_topics = self._retry_topics
        assert self._consumer is not None
        self._recorder = Recorder(self._pool, self.group, self.status)
        self._committer = Committer(self._consumer, self.hooks, self.status, tracing=self._tracing)
        self._committer.start()
        # Asked in the background with or without a health port: outages are logged while idle too.
        self._prober = Prober(self.status, database=DatabaseProbe(db), broker=self._probe)
        self._prober.start()
        if s.health_port is not None:
            self.health = HealthServer(
                self.status, s.health_host, s.health_port, registry=self.telemetry.prometheus_registry,
                confirm=self._prober.confirm,
            )
            await self.health.start()
        log.info(
            "consumer.started", group=self.group, topics=list(self.topics), ordering=s.ordering,
            max_batch_size=s.max_batch_size, handlers=sorted(self.app.handlers),
        )

    async def _start_kafka(self) -> None:
        s = self.settings
        consumer = kafka_consumer(
            s.kafka,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            max_poll_records=s.max_batch_size,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(s.session_timeout_s * 1000 / 3)),
            max_poll_interval_ms=int(s.max_poll_interval_s * 1000),
            # How long the group waits for members to rejoin a rebalance (the Java client's
            # choice; aiokafka's default is the session timeout). A revocation finishes
            # in-flight work inside it (shutdown_grace_s, then a commit).
            rebalance_timeout_ms=int(s.max_poll_interval_s * 1000),
            # Records of aborted transactions (an interrupted `eventq dlq replay`) are never seen.
            isolation_level="read_committed",
            fetch_max_wait_ms=min(500, int(s.max_batch_timeout_s * 1000)),
        )
        try:
            await consumer.start()
            existing = await consumer.topics()
        except Exception as exc:
            await consumer.stop()
            reason = explain(exc, s.kafka, topic=",".join(self.topics), operation="Describe", group=self.group)
            if reason is not None:  # authentication, TLS or a missing ACL: retrying cannot help
                raise ConsumerError(reason) from exc
            raise ConsumerError(
                f"cannot reach a Kafka broker at {s.kafka.bootstrap_servers} ({type(exc).__name__}: {exc}); "
                "start it (eventq dev up) or fix EVENTQ_BOOTSTRAP_SERVERS",
                retriable=True,
            ) from exc
        self._consumer = consumer
        await check_group_access(s.kafka, self.group)  # aiokafka would retry a refused group forever
        missing = [t for t in self.topics if t not in existing]
        if missing:
            raise ConsumerError(
                f"topic(s) {', '.join(missing)} do not exist; create them (eventq topics create "
                f"{' '.join(missing)})"
            )
        # derived topic -> the source topic it serves (for its partition count and replication)
        derived = {s.dead_letter_topic_for(t): t for t in self.topics}
        retry_handlers = [h for h in self.app.handlers.values() if h.retry_topics]
        levels = max(((h.max_attempts or s.max_attempts) - 1 for h in retry_handlers), default=0)
        retry_names = {retry_topic(t, n): t for t in self.topics for n in range(1, levels + 1)}
        derived.update(retry_names)
        missing_derived = sorted(set(derived) - existing)
        if missing_derived and not s.create_topics:
            raise ConsumerError(
                f"topic(s) {', '.join(missing_derived)} do not exist; create them (eventq topics create "
                f"{' '.join(missing_derived)}) or allow EVENTQ_CREATE_TOPICS"
            )
        shapes = await topic_shapes(s.kafka, set(derived.values())) if missing_derived else {}
        limits = await max_message_bytes(s.kafka, [*self.topics, *derived])
        for name in missing_derived:
            # The source's shape: as many partitions, and as many replicas (so a dead-letter
            # topic is not the one topic lost with a single broker); and room for any
            # source record plus eventq's headers, so every letter fits.
            partitions, replication = shapes.get(derived[name], (1, 1))
            config = {}
            if derived[name] in limits:
                config["max.message.bytes"] = str(limits[derived[name]] + HEADROOM_BYTES)
            try:
                await create_topics(
                    s.kafka, [name], partitions=partitions, replication_factor=replication, config=config
                )
            except EventqError as exc:
                raise ConsumerError(f"cannot create topic {name!r}: {getattr(exc, 'reason', exc)}") from exc
            log.info("consumer.topic_created", topic=name, partitions=partitions, replication_factor=replication,
                     **config)
        self._sink.limits = await max_message_bytes(s.kafka, derived) if missing_derived else {
            name: limit for name, limit in limits.items() if name in derived
        }
        self._retry_topics = frozenset(retry_names)
        await self._sink.start()
        await self._producer.start()
        consumer.subscribe([*self.topics, *sorted(retry_names)], listener=_Rebalance(self))

    async def _shutdown(self) -> None:
        try:
            running = list(self._slices.values())
            if running:
                log.info("consumer.draining", slices=len(running), grace_s=self.settings.shutdown_grace_s)
                await self._finish(running)
            if self._committer is not None:
                try:
                    async with asyncio.timeout(max(5.0, self.settings.shutdown_grace_s)):
                        await self._committer.commit_now()
                except Exception as exc:
                    log.warning("consumer.final_commit_failed", error_type=type(exc).__name__, error=str(exc))
        finally:
            await self._close_clients()
        log.info("consumer.stopped", group=self.group)

    async def _probe(self) -> None:
        """The prober's question to Kafka: a metadata request on the consumer's own client (it bounds it)."""
        assert self._consumer is not None
        await self._consumer.topics()

    def _lag(self) -> Iterator[tuple[str, int, int]]:
        """(topic, partition, records after the last commit) for each assigned partition with a known end."""
        consumer, committer = self._consumer, self._committer
        if consumer is None or committer is None:
            return
        for tp in consumer.assignment():
            try:
                end = consumer.last_stable_offset(tp)
            except (AssertionError, ke.KafkaError):  # just revoked
                continue
            done = committer.committed.get(tp, self._first_fetched.get(tp))
            if end is not None and done is not None:  # (None: nothing fetched from it yet)
                yield tp.topic, tp.partition, max(0, end - done)

    async def _close_clients(self) -> None:
        if self._committer is not None:
            await self._committer.stop()
        if self._recorder is not None:
            await self._recorder.stop()
        if self.health is not None:
            await self.health.stop()
        if self._prober is not None:
            await self._prober.stop()
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: partitions move at once
            self._consumer = None
        await self._producer.stop()
        await self._sink.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _finish(self, slices: list[asyncio.Task[None]]) -> None:
        """Let slices finish within the grace period; cancel (abandon, uncommitted) the rest."""
        _, late = await asyncio.wait(slices, timeout=self.settings.shutdown_grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            log.warning("consumer.slices_abandoned", slices=len(late))

    # -- fetching ------------------------------------------------------------------

    async def _fetch_loop(self, *, until_idle: bool) -> None:
        consumer = self._consumer
        assert consumer is not None
        unassigned_since = asyncio.get_running_loop().time()
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await self._fetch_until(consumer, stop, until_idle, unassigned_since)
        finally:
            stop.cancel()

    async def _fetch_until(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Task[Any], until_idle: bool, unassigned_since: float
    ) -> None:
        s = self.settings
        while not self._stopping.is_set():
            assigned = consumer.assignment()
            self.status.assigned = len(assigned)
            free = [tp for tp in assigned if tp not in self._slices]
            if self._slices and not free:
                await self._all_busy(consumer)
                continue
            timeout = s.max_batch_timeout_s if not self._slices else 0.01
            # Raced against stop(): during a rebalance getmany waits for the new
            # assignment, which must not hold up a shutdown (cancelling it is safe:
            # records are only taken from aiokafka's buffer once it returns).
            fetch = asyncio.ensure_future(
                consumer.getmany(*free, timeout_ms=int(timeout * 1000), max_records=s.max_batch_size)
            )
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, ke.KafkaError):
                    await fetch
                return
            try:
                records = fetch.result()
            except _REFUSED as exc:
                # aiokafka keeps retrying a refused group or topic for ever: stop with the cause.
                reason = explain(exc, s.kafka, topic=",".join(self.topics), operation="Read", group=self.group)
                raise ConsumerError(reason or f"{type(exc).__name__}: {exc}") from exc
            except ke.KafkaError as exc:
                log.warning("consumer.fetch_failed", error_type=type(exc).__name__, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if records and not self._stopping.is_set():
                # (Records fetched as the stop came are not started: nothing after
                # the last finished record is committed, so they are redelivered.)
                self._dispatch(records)
                continue
            if not records and not self._stopping.is_set():
                await self._commit_past_markers(consumer)
            if until_idle and not self._slices:
                now = asyncio.get_running_loop().time()
                if assigned:
                    unassigned_since = now
                    if await self._caught_up(consumer, assigned):
                        await self._commit_past_markers(consumer, force=True)
                        log.info("consumer.idle", group=self.group)
                        return
                elif now - unassigned_since > 2 * s.session_timeout_s:
                    log.info("consumer.idle_unassigned", group=self.group)
                    return

    async def _all_busy(self, consumer: AIOKafkaConsumer) -> None:
        self._slice_done.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ALL_BUSY_WAIT_S):
                await self._slice_done.wait()
                return
        # Still all busy (retries, an outage): pause the busy partitions so polling
        # returns nothing for them, and poll so the group does not evict us.
        busy = [tp for tp in self._slices if tp not in self._paused]
        if busy:
            consumer.pause(*busy)
            self._paused.update(busy)
        if set(consumer.assignment()) <= self._paused:
            try:
                stray = await consumer.getmany(timeout_ms=0)
            except ke.KafkaError:
                return
            # A rebalance during that call may have assigned new (unpaused) partitions:
            # their records are ours now and must be processed, not dropped.
            if stray and not self._stopping.is_set():
                self._dispatch(stray)

    async def _commit_past_markers(self, consumer: AIOKafkaConsumer, *, force: bool = False) -> None:
        """Offer the position of idle partitions whose position passed what was committed.

        A partition's position moves past records the daemon never sees — the
        transaction markers ``eventq dlq replay`` leaves, aborted records — without a
        record to commit after them, so the committed offset would stay one below the
        log end for good (lag 1 in every lag-based tool). An idle partition (no slice in
        flight) has finished every record before its position, so committing the position
        commits nothing unfinished. Checked at most once a second.
        """
        now = time.monotonic()
        if (now < self._markers_checked + 1.0 and not force) or self._committer is None:
            return
        self._markers_checked = now
        committer = self._committer
        for tp in consumer.assignment():
            if tp in self._slices:
                continue
            try:
                position = await consumer.position(tp)
                done = committer.committed.get(tp)
                if done is None:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        continue
                    done = committer.committed[tp] = committed
            except (ke.KafkaError, ke.IllegalStateError, AssertionError):  # revoked meanwhile
                continue
            if position > done and tp not in self._slices and tp in consumer.assignment():
                committer.offer(tp, position)

    async def _caught_up(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> bool:
        try:
            ends = await consumer.end_offsets(list(assigned))
            for tp in assigned:
                if await consumer.position(tp) < ends[tp]:
                    return False
        except (ke.KafkaError, ke.IllegalStateError):
            return False
        return True

    def _dispatch(self, records: Mapping[TopicPartition, list[Any]]) -> None:
        slices: dict[TopicPartition, list[Item]] = {}
        ids: list[store.Identity] = []
        for tp, batch in records.items():
            if tp in self._slices:  # cannot happen by construction; never process a partition twice at once
                assert self._consumer is not None
                self._consumer.seek(tp, batch[0].offset)
                continue
            self._first_fetched.setdefault(tp, batch[0].offset)
            items = decode_items(batch, self.app, self.registry, self._producer.settings.max_event_bytes)
            slices[tp] = items
            ids.extend((item.event.id, item.event.source) for item in items if item.event is not None)
        seen = asyncio.create_task(self._dedupe(ids))
        for tp, items in slices.items():
            self._interrupts[tp] = Interrupt()
            self._slices[tp] = asyncio.create_task(self._slice(tp, items, seen), name=f"eventq-slice-{tp}")
        log.debug("consumer.batch_fetched", records=sum(len(v) for v in slices.values()), partitions=len(slices))

    async def _dedupe(self, ids: list[store.Identity]) -> dict[store.Identity, str]:
        return await with_database(  # type: ignore[no-any-return]
            self.status, lambda: store.finished(self._pool, self.group, ids)
        )

    # -- one partition's slice -------------------------------------------------------

    async def _slice(
        self, tp: TopicPartition, items: list[Item], seen: asyncio.Task[dict[store.Identity, str]]
    ) -> None:
        started = time.perf_counter()
        traced = trace.use_span(self._process_span(tp, items), end_on_exit=True) if self._tracing.enabled else None
        result: SliceResult | None = None
        try:
            with traced or contextlib.nullcontext():
                result = await self._run_slice(tp, items, seen)
        finally:
            if result is not None:
                finished = result.next_offset - items[0].record.offset  # the rest is fetched again
                self._metrics.slice_done(
                    tp.topic, tp.partition, len(items), finished, result.duplicates, result.retries,
                    (letter.failure.reason for letter in result.letters), time.perf_counter() - started,
                )

    def _process_span(self, tp: TopicPartition, items: list[Item]) -> Span:
        """Start the slice's ``process`` span, linked to each event's creation context (kept on the item)."""
        creations = []
        for item in items:
            event = item.event
            if event is not None and event.traceparent:
                item.parent = parent = tr.context_from_traceparent(event.traceparent, event.tracestate)
                if parent is not None:
                    creations.append(tr.span_context_of(parent))
        return self._tracing.process(tp.topic, tp.partition, self.group, creations)

    async def _run_slice(
        self, tp: TopicPartition, items: list[Item], seen: asyncio.Task[dict[store.Identity, str]]
    ) -> SliceResult | None:
        """Process, dead-letter, record, offer the commit; the result, or None if the slice failed (rewound)."""
        assert self._processor is not None
        result: SliceResult | None = None
        try:
            result = await self._processor.run(items, await asyncio.shield(seen), self._interrupts[tp])
            await self.hooks.after_handlers(tp.topic, tp.partition, result)
            assert self._recorder is not None
            if result.letters or result.handoffs:
                # Handled events are recorded before the dead letters are sent, so a
                # dead-letter topic that is down stalls only the commit: if the partition
                # moves on meanwhile, the new owner skips them instead of running them again.
                # A dead-lettered event's row waits for its letter's acknowledgement.
                lettered = [row for row in result.rows if row.outcome == "dead_lettered"]
                if len(lettered) < len(result.rows):
                    await self._recorder.record([row for row in result.rows if row.outcome != "dead_lettered"])
                await self._send_dead_letters(result)
                if lettered:
                    await self._recorder.record(lettered)
            elif result.rows:
                await self._recorder.record(result.rows)
            await self.hooks.after_record(tp.topic, tp.partition, result)
            if result.next_offset > items[0].record.offset:
                assert self._committer is not None
                self._committer.offer(tp, result.next_offset, result.span)
            if result.next_offset <= items[-1].record.offset:
                # Interrupted: the rest of the slice must be fetched again, not skipped.
                consumer = self._consumer
                if consumer is not None and tp in consumer.assignment() and not self._stopping.is_set():
                    consumer.seek(tp, result.next_offset)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not committed; rewind so the slice is fetched again instead of skipped.
            log.error(
                "consumer.slice_failed", topic=tp.topic, partition=tp.partition, first_offset=items[0].record.offset,
                error_type=type(exc).__name__, error=bounded(str(exc), 1000), exc_info=exc,
            )
            consumer = self._consumer
            if consumer is not None and tp in consumer.assignment():
                consumer.seek(tp, items[0].record.offset)
            tr.fail(trace.get_current_span(), exc)
            await asyncio.sleep(1.0)
            result = None
        finally:
            del self._slices[tp]
            self._interrupts.pop(tp, None)
            if tp in self._paused:
                self._paused.discard(tp)
                if self._consumer is not None and tp in self._consumer.assignment():
                    self._consumer.resume(tp)
            self._slice_done.set()
        return result

    async def _send_dead_letters(self, result: SliceResult) -> None:
        """Publish the slice's dead letters and retry records; retry until the broker acknowledges all."""
        letters = []
        spans = []
        for letter in result.letters:
            # (A letter from a retry topic that names no source goes to its source's topic.)
            source = origin_of(letter.topic) if letter.topic in self._retry_topics else None
            topic = self.settings.dead_letter_topic_for(source or letter.topic)
            headers = dead_letter_headers(letter)
            if letter.span is not None and self._tracing.enabled:
                span = self._tracing.dead_letter(topic, letter.span, letter.failure.reason)
                traceparent = tr.traceparent_of(span)
                if traceparent is not None:
                    headers.append((DLT_TRACEPARENT, traceparent.encode()))
                spans.append(span)
            letters.append((topic, letter.key, letter.value, headers))
        try:
            while True:
                try:
                    await self._sink.send(letters, result.handoffs)
                except EventqError as exc:
                    for span in spans:
                        span.add_event("send_failed", {tr.ERROR_TYPE: type(exc).__qualname__})
                    await self.status.broker_down(exc, "dead_letter")
                    continue
                self.status.broker_up()
                return
        finally:
            for span in spans:
                span.end()

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked & set(self._interrupts):
            self._interrupts[tp].set()
        running = [task for tp, task in self._slices.items() if tp in revoked]
        if running:
            await self._finish(running)
        if self._committer is not None:
            try:
                async with asyncio.timeout(self.settings.session_timeout_s):
                    await self._committer.commit_now(only=revoked)
            except Exception as exc:  # timeout, or a failing hook: the new owner redelivers, rows dedupe
                log.warning("consumer.revoke_commit_failed", partitions=len(revoked), error_type=type(exc).__name__)
            finally:
                self._committer.forget(revoked)
        self._paused -= revoked
        for tp in revoked:
            self._first_fetched.pop(tp, None)
        log.info("consumer.partitions_revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, daemon: Consumer) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.daemon._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("consumer.partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
