"""The consumer daemon: fetch a batch, handle, record, commit — and keep going.

Guarantees (each proven by a test against the real broker and database):

- **Handle first, record second, commit last.** A partition's offset is committed
  only after every record before it has its ``processed_events`` row written or its
  dead letter acknowledged by the broker. A crash at any point loses nothing: the
  records after the last commit are delivered again.
- **Redelivered events skip their handler.** One query per fetched batch finds the
  events the group already finished.
- **Partitions are independent, and pipelined.** Each partition's slice of a batch
  runs as its own task; a slow or retrying partition is not fetched again until its
  slice's handlers are done, while the others keep being fetched and processed. Its
  next slice is handled while the previous one is recorded and committed; offsets are
  still committed in order, each only once everything before it is recorded.
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
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as ke

from eventq.consumers import store
from eventq.consumers.app import App
from eventq.consumers.commit import Committer
from eventq.consumers.deadletter import DeadLetterSink, letter_record
from eventq.consumers.decode import decode_items
from eventq.consumers.dedupe import InFlight, Lookups, identities, mark_duplicates
from eventq.consumers.fetch import Fetcher, Lane, Lanes
from eventq.consumers.handle import Handle
from eventq.consumers.health import HealthServer, Status, with_database
from eventq.consumers.instruments import Chain, Instruments, Measured, Traced
from eventq.consumers.outcome import Slice
from eventq.consumers.probes import DatabaseProbe, Prober
from eventq.consumers.record import Recorder
from eventq.consumers.settings import ConsumerSettings
from eventq.consumers.topics import provision_derived_topics
from eventq.errors import ConsumerError, DatabaseUnavailable, EventqError
from eventq.kafka import ask_metadata, check_group_access, explain
from eventq.kafka import consumer as kafka_consumer
from eventq.outbox.writer import Outbox
from eventq.producers.producer import Producer
from eventq.telemetry import Telemetry
from eventq.telemetry import tracing as tr
from eventq.telemetry.logs import bounded
from eventq.telemetry.metrics import ConsumerMetrics

log = structlog.get_logger("eventq.consumer")


class Consumer:
    """A consumer daemon for one :class:`App` (one consumer group).

    ``await consumer.run()`` starts it and returns after :meth:`stop` (or, with
    ``until_idle=True``, once every assigned partition is processed up to its end).
    Startup problems raise :class:`~eventq.errors.ConsumerError`,
    :class:`~eventq.errors.DatabaseUnavailable` or :class:`~eventq.errors.ConfigError`.

    It reports to ``telemetry``'s providers (default: the global ones): spans per
    slice and per event (:mod:`eventq.telemetry.tracing`), metrics per slice and the
    lag per partition (:mod:`eventq.telemetry.metrics`), served for Prometheus at
    ``/metrics`` on the health port. ``instruments`` (:mod:`eventq.consumers.instruments`)
    observe every step besides those; tests use them to crash at a point.
    """

    def __init__(
        self,
        app: App,
        settings: ConsumerSettings | None = None,
        *,
        instruments: Instruments | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.app = app
        self.settings = settings = settings or ConsumerSettings.from_env()
        self.group, self.topics = settings.subscription(app)
        self.registry = settings.registry_for(app)
        self.telemetry = telemetry = telemetry or Telemetry()
        self._tracing = tr.Tracing(telemetry.tracer_provider)
        self._metrics = ConsumerMetrics(telemetry.meter_provider, self.group)
        self._extra = instruments
        self.instruments: Instruments = Instruments()  # chosen at start (tracing may be set up later)
        self.status = Status()
        self.health: HealthServer | None = None
        self._prober: Prober | None = None
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: Any = None
        self._sink = DeadLetterSink(settings.kafka, timeout_s=settings.dead_letter_timeout_s)
        # Follow-up events are validated by the daemon's registry (the App's inline schemas too): loaded once.
        self._producer = Producer(settings.producer_for(app.schemas), telemetry=telemetry, registry=self.registry)
        self._handle: Handle | None = None
        self._lanes = Lanes()
        self._in_flight = InFlight()
        self._lookups = Lookups(self._dedupe)
        self._committer: Committer | None = None
        self._recorder: Recorder | None = None
        self._fetcher: Fetcher | None = None
        self._retry_topics: frozenset[str] = frozenset()
        self._first_fetched: dict[TopicPartition, int] = {}  # per partition, since assigned (for the lag)

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler); :meth:`run` then returns.

        Running slices finish the handler they are in and start no other; what is
        finished is recorded and committed, the rest is delivered again later.
        """
        self._stopping.set()
        for lane in self._lanes.values():
            lane.interrupt.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Start, process until stopped (or idle), then shut down cleanly."""
        try:
            await self._start()
        except BaseException:
            await self._close_clients()  # whatever had started by then
            raise
        ticker = asyncio.create_task(self._tick(), name="eventq-liveness")
        try:
            assert self._fetcher is not None
            await self._fetcher.run(self._stopping, until_idle=until_idle)
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
        for table in ("processed_events", "eventq_outbox"):  # (transactional handlers' follow-ups go to the outbox)
            if await self._pool.fetchval("SELECT to_regclass($1)", table) is None:
                raise ConsumerError(
                    f"the database at {db.safe_url} has no {table} table; run 'eventq db migrate' "
                    "(or eventq consume --migrate)"
                )
        await self._start_kafka()
        self.instruments = ins = Chain.of(
            Measured(self._metrics), Traced(self._tracing, self.group) if self._tracing.enabled else None, self._extra,
        )
        self._handle = Handle(
            app=self.app, settings=s, group=self.group, producer=self._producer, pool=self._pool, status=self.status,
            instruments=ins,
            outbox=Outbox(self._producer.settings, registry=self._producer.registry, telemetry=self.telemetry),
        )
        assert self._consumer is not None
        self._recorder = Recorder(self._pool, self.group, self.status)
        self._committer = Committer(self._consumer, self.status, ins)
        self._committer.start()
        self._fetcher = Fetcher(
            self._consumer, s, self._lanes, self._committer, self._dispatch, topics=self.topics, group=self.group,
            assigned=self._assigned,
        )
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
        retry_names, self._sink.limits = await provision_derived_topics(s, self.app, self.topics, existing)
        self._retry_topics = frozenset(retry_names)
        await self._sink.start()
        await self._producer.start()
        consumer.subscribe([*self.topics, *sorted(retry_names)], listener=_Rebalance(self))

    def _assigned(self, partitions: int) -> None:
        self.status.assigned = partitions

    async def _shutdown(self) -> None:
        try:
            running = [task for lane in self._lanes.values() for task in lane.tasks()]
            if running:
                log.info("consumer.draining", slices=len(running), grace_s=self.settings.shutdown_grace_s)
                await self._finish()
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
        await ask_metadata(self._consumer._client)  # noqa: SLF001 - the consumer's own client answers

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
        await self._lookups.stop()
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

    async def _finish(self, partitions: set[TopicPartition] | None = None) -> None:
        """Let the slices of ``partitions`` (default: all) finish within the grace period, settle tasks
        they start included; cancel (abandon, uncommitted) the rest."""
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        while True:
            running = [
                task for tp, lane in self._lanes.items() if partitions is None or tp in partitions
                for task in lane.tasks()
            ]
            if not running:
                return
            left = deadline - asyncio.get_running_loop().time()
            _, late = await asyncio.wait(running, timeout=max(0.0, left))
            if late and asyncio.get_running_loop().time() >= deadline:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                log.warning("consumer.slices_abandoned", slices=len(late))
                return

    # -- one partition's slice: decode, dedupe, handle; then dead-letter, record, commit ---------

    def _dispatch(self, records: Mapping[TopicPartition, list[Any]]) -> None:
        """Start a slice per partition of a fetched batch (stage 1 → 2 → 3 → 4)."""
        slices: list[tuple[Lane, Slice]] = []
        ids: list[store.Identity] = []
        for tp, batch in records.items():
            if tp in self._lanes.closed:
                continue  # being revoked: the next owner fetches these from the last commit
            lane = self._lanes.lane(tp)
            if not lane.free:  # cannot happen by construction; never handle a partition twice at once
                assert self._consumer is not None
                self._consumer.seek(tp, batch[0].offset)
                continue
            self._first_fetched.setdefault(tp, batch[0].offset)
            items = decode_items(
                batch, self.app, self.registry, self._producer.settings.max_event_bytes, self._retry_topics
            )
            slices.append((lane, Slice(tp.topic, tp.partition, items)))
            ids.extend(identities(items))
        unwritten = self._in_flight.snapshot(ids)  # taken as the query goes out (see eventq.consumers.dedupe)
        seen = asyncio.create_task(self._lookups.finished(ids))
        for lane, sl in slices:
            lane.unsettled += 1
            lane.handling = asyncio.create_task(
                self._handle_slice(lane, sl, seen, unwritten), name=f"eventq-slice-{sl.topic}-{sl.partition}"
            )

    async def _dedupe(self, ids: list[store.Identity]) -> dict[store.Identity, str]:
        return await with_database(  # type: ignore[no-any-return]
            self.status, lambda: store.finished(self._pool, self.group, ids)
        )

    async def _handle_slice(
        self, lane: Lane, sl: Slice, seen: asyncio.Task[dict[store.Identity, str]],
        unwritten: dict[store.Identity, str],
    ) -> None:
        """Dedupe and handle; then hand the slice to its settle task and free the lane for the next fetch."""
        assert self._handle is not None
        ins = self.instruments
        tp = TopicPartition(sl.topic, sl.partition)
        ins.slice_started(sl)
        active = ins.activate_slice(sl)
        settled = False
        try:
            mark_duplicates(sl.items, await asyncio.shield(seen), unwritten)
            await self._handle.run(sl.items, lane.interrupt)
            await ins.after_handlers(sl)
            rows = sl.rows
            self._in_flight.add(rows)
            lane.settling = asyncio.create_task(
                self._settle(lane, tp, sl, rows, lane.settling), name=f"eventq-settle-{sl.topic}-{sl.partition}"
            )
            settled = True
            if not sl.complete:
                # Interrupted: the rest of the slice must be fetched again, not skipped.
                self._rewind(lane, tp, sl.next_offset)
        except asyncio.CancelledError as exc:
            if not settled:
                ins.slice_finished(sl, exc)
            raise
        except Exception as exc:
            self._failed(lane, tp, sl, exc)
        finally:
            ins.deactivate(active)
            if not settled:
                lane.unsettled -= 1
            lane.handling = None
            self._freed(lane, tp)

    async def _settle(
        self, lane: Lane, tp: TopicPartition, sl: Slice, rows: list[store.Processed],
        previous: asyncio.Task[bool] | None,
    ) -> bool:
        """Dead-letter, record, offer the commit (stage 5 → 6 → 7); False if it (or an earlier slice) failed."""
        ins = self.instruments
        error: BaseException | None = None
        try:
            assert self._recorder is not None
            lettered = sl.lettered
            handoffs = sl.handoffs
            if lettered or handoffs:
                # Handled events are recorded before the dead letters are sent, so a
                # dead-letter topic that is down stalls only the commit: if the partition
                # moves on meanwhile, the new owner skips them instead of running them again.
                # A dead-lettered event's row waits for its letter's acknowledgement.
                first = [row for row in rows if row.outcome != "dead_lettered"]
                later = [row for row in rows if row.outcome == "dead_lettered"]
                if first:
                    await self._recorder.record(first)
                await self._send_dead_letters(sl, lettered, handoffs)
                if later:
                    await self._recorder.record(later)
            elif rows:
                await self._recorder.record(rows)
            await ins.after_record(sl)
            # Offsets are committed in order: only once every earlier slice of the lane is recorded.
            if previous is not None and not await asyncio.shield(previous):
                return False
            if sl.next_offset > sl.first_offset:
                assert self._committer is not None
                self._committer.offer(tp, sl.next_offset, ins.slice_token(sl))
            return True
        except asyncio.CancelledError as exc:
            error = exc
            raise
        except Exception as exc:
            error = exc
            self._failed(lane, tp, sl, exc)
            return False
        finally:
            self._in_flight.written(rows)  # (written, or abandoned: then fetched again)
            if not isinstance(error, Exception):
                ins.slice_finished(sl, None if error is None else error)
            lane.unsettled -= 1
            self._freed(lane, tp)

    def _failed(self, lane: Lane, tp: TopicPartition, sl: Slice, exc: Exception) -> None:
        """A slice failed unexpectedly: not committed; the partition is fetched again from its first record."""
        log.error(
            "consumer.slice_failed", topic=tp.topic, partition=tp.partition, first_offset=sl.first_offset,
            error_type=type(exc).__name__, error=bounded(str(exc), 1000), exc_info=exc,
        )
        self.instruments.slice_finished(sl, exc)
        self._rewind(lane, tp, sl.first_offset, pause_s=1.0)

    def _rewind(self, lane: Lane, tp: TopicPartition, offset: int, *, pause_s: float = 0.0) -> None:
        """Fetch ``tp`` again from ``offset`` once no slice of it is being handled."""
        lane.rewind = offset if lane.rewind is None else min(lane.rewind, offset)
        if pause_s:
            asyncio.get_running_loop().call_later(pause_s, self._apply_rewind, lane, tp, True)
        elif lane.handling is None or lane.handling is asyncio.current_task():
            self._apply_rewind(lane, tp)

    def _apply_rewind(self, lane: Lane, tp: TopicPartition, late: bool = False) -> None:
        """Seek to the lane's rewind offset now, or once its handling task ends; ``late``: tell the fetcher."""
        if lane.rewind is None:
            return
        if lane.handling is not None and lane.handling is not asyncio.current_task() and not lane.handling.done():
            lane.handling.add_done_callback(lambda _: self._apply_rewind(lane, tp, True))
            return
        consumer = self._consumer
        if consumer is not None and tp in consumer.assignment() and not self._stopping.is_set():
            consumer.seek(tp, lane.rewind)
        lane.rewind = None
        if late:
            self._freed(lane, tp)

    def _freed(self, lane: Lane, tp: TopicPartition) -> None:
        if lane.free and self._fetcher is not None:
            self._fetcher.resume(tp)
        self._lanes.changed.set()

    async def _send_dead_letters(self, sl: Slice, lettered: list[Any], handoffs: list[Any]) -> None:
        """Publish the slice's dead letters and retry records; retry until the broker acknowledges all."""
        ins = self.instruments
        letters = []
        tokens = []
        for item in lettered:
            topic, key, value, headers = letter_record(item.letter(self.group), self.settings, self._retry_topics)
            extra, token = ins.letter_sending(item, sl, topic)
            headers.extend(extra)
            tokens.append(token)
            letters.append((topic, key, value, headers))
        try:
            while True:
                try:
                    await self._sink.send(letters, handoffs)
                except EventqError as exc:
                    for token in tokens:
                        ins.letter_failed(token, exc)
                    await self.status.broker_down(exc, "dead_letter")
                    continue
                self.status.broker_up()
                return
        finally:
            for token in tokens:
                ins.letter_sent(token)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._lanes.closed |= revoked
        for tp in revoked & set(self._lanes):
            self._lanes[tp].interrupt.set()
        await self._finish(revoked)
        if self._committer is not None:
            try:
                async with asyncio.timeout(self.settings.session_timeout_s):
                    await self._committer.commit_now(only=revoked)
            except Exception as exc:  # timeout, or a failing crash point: the new owner redelivers, rows dedupe
                log.warning("consumer.revoke_commit_failed", partitions=len(revoked), error_type=type(exc).__name__)
            finally:
                self._committer.forget(revoked)
        for tp in revoked:
            self._lanes.pop(tp, None)
            self._lanes.paused.discard(tp)
            self._first_fetched.pop(tp, None)
        log.info("consumer.partitions_revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, daemon: Consumer) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.daemon._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.daemon._lanes.closed -= set(assigned)
        log.info("consumer.partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
