"""One fault run: publish the workload while a fault is injected, heal, drain, check P1–P6.

    result = await run_fault(FAULTS["F1"], services, seed=7, events=20_000, home=Path(...))

The run uses its own topic, consumer group and database on ``services``, so runs can
share one broker and PostgreSQL cluster (a run heals what its fault broke).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from eventq.kafka import create_topics, topic_shapes
from tests.conftest import end_offsets
from tests.faults import checks, outbox
from tests.faults.faults import Disruptions, Fault, Scene
from tests.faults.stack import REPO, Services, Workers
from tests.faults.workload import EVENT_TYPE, SCHEMAS, PublishLog, Workload, build, publish
from tests.integration.consumer_kit import committed

LAG_BOUND_S = 120.0
"""P4: after healing, the group's lag must be back to 0 within this many seconds."""


@dataclass
class Result:
    """Everything the report shows for one fault run."""

    fault: Fault
    seed: int
    events: int
    verdicts: dict[str, checks.Verdict] = field(default_factory=dict)
    drain_s: float = float("nan")
    seconds: float = 0.0
    resent: int = 0
    actions: list[str] = field(default_factory=list)
    deaths: dict[str, int] = field(default_factory=dict)  # how workers (and "relay ..." relays) died -> count
    facts: list[str] = field(default_factory=list)  # figures that are not a property
    workers_started: int = 0
    relays_started: int = 0
    explained_duplicates: Counter[str] = field(default_factory=Counter)  # crash window -> duplicates
    logs: Path | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts.values())

    def failures(self) -> str:
        """The seed and the offending ids of every failed property (empty if none failed)."""
        lines = []
        for name, v in self.verdicts.items():
            if not v.ok:
                shown = ", ".join(v.ids[:20]) + (f" … ({len(v.ids)} in all)" if len(v.ids) > 20 else "")
                lines.append(f"{self.fault.name} seed={self.seed}: {name} failed: {v.figure}; ids: {shown or '-'}")
                lines += [f"  {d}" for d in v.details]
        if lines and self.logs is not None:
            lines.append(f"worker logs: {self.logs}")
        return "\n".join(lines)


def worker_env(services: Services, *, topic: str, group: str, fix_file: Path) -> dict[str, str]:
    """The daemons' settings: the product defaults, except shorter timeouts so faults bite quickly.

    ``EVENTQ_DATABASE_URL`` is added once the run's database exists.
    """
    return {
        "EVENTQ_BOOTSTRAP_SERVERS": services.bootstrap,
        "EVENTQ_GROUP": group,
        "EVENTQ_TOPICS": topic,
        "EVENTQ_SESSION_TIMEOUT_S": "6",
        "EVENTQ_MAX_POLL_INTERVAL_S": "15",
        "EVENTQ_BACKOFF_INITIAL_S": "0.2",
        "EVENTQ_BACKOFF_MAX_S": "2",
        "EVENTQ_SHUTDOWN_GRACE_S": "5",
        "EVENTQ_DEAD_LETTER_TIMEOUT_S": "5",
        "EVENTQ_SCHEMAS": SCHEMAS,
        "FAULT_FIX_FILE": str(fix_file),
        "PYTHONPATH": str(REPO),
    }


async def lag(services: Services, group: str, topic: str, *, tolerance: int = 0) -> int | None:
    """Records of ``topic`` not yet committed by ``group`` (None if the broker cannot say).

    ``tolerance`` 1 forgives one offset per partition: the marker a replay's transaction
    leaves after its last record, which a consumer never commits past until a new record.
    """
    try:
        ends = await end_offsets(services.kafka, topic)
        done = await committed(services.kafka, group, topic)
    except Exception:  # noqa: BLE001 - a broker still recovering answers later
        return None
    return sum(max(0, end - done.get(p, 0) - (tolerance if done.get(p, 0) < end else 0)) for p, end in ends.items())


async def wait_drained(services: Services, group: str, topic: str, *, timeout: float, tolerance: int = 0) -> float:
    """Seconds until the group's lag on ``topic`` is 0; raises TimeoutError after ``timeout``."""
    started = time.monotonic()
    while True:
        if await lag(services, group, topic, tolerance=tolerance) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"lag of {group} on {topic} not 0 after {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def replay(
    services: Services,
    dlt: str,
    run: str,
    *,
    kill_when: Callable[[], Awaitable[bool]] | None = None,
    rate: str | None = None,
) -> str:
    """Run ``eventq dlq replay`` for the workload's event type and return its summary line.

    With ``kill_when``, the CLI is killed -9 as soon as that returns True (checked every
    0.1 s), as a crash mid-run would.
    """
    command = [str(Path(sys.executable).parent / "eventq"), "dlq", "replay", dlt, "--bootstrap-servers",
               services.bootstrap, "--run", run, "--yes", "--event-type", EVENT_TYPE]  # fmt: skip
    if rate:
        command += ["--rate", rate]
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    killed = False
    if kill_when is not None:
        while proc.returncode is None:
            if await kill_when():
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            await asyncio.sleep(0.1)
    try:
        async with asyncio.timeout(180):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise TimeoutError("eventq dlq replay did not finish within 180 s") from None
    text = out.decode(errors="replace").strip().splitlines()
    if killed:
        return f"killed -9 mid-run (exit {proc.returncode})"
    if proc.returncode != 0:
        raise RuntimeError(f"eventq dlq replay exited {proc.returncode}: {out.decode(errors='replace')}")
    return text[-1] if text else ""


async def run_fault(
    fault: Fault, services: Services, *, seed: int, events: int, home: Path, publish_s: float = 12.0
) -> Result:
    """Run one fault end to end and return the checked result.

    It never raises for the run itself: a failed check, a bound exceeded or a harness
    error all come back as failed verdicts carrying the seed. Whatever happens, the
    services are healed and the workers stopped before it returns.
    """
    started = time.monotonic()
    rng = random.Random(f"{fault.name}:{seed}")
    # The outbox validates every event it adds: the outbox rows have no malformed records.
    workload: Workload = build(seed, events, malformed=0 if fault.relays else 2)
    suffix = uuid.uuid4().hex[:6]
    topic, group = f"faults.{fault.name.lower()}.{suffix}", f"faults-{fault.name.lower()}-{suffix}"
    run_home = home / f"{fault.name}-{suffix}"
    run_home.mkdir(parents=True)
    fix_file = run_home / "fix-deployed"
    workers = Workers(
        env=worker_env(services, topic=topic, group=group, fix_file=fix_file),
        logs=run_home / "logs",
        crash_plan=list(fault.crash_plan),
    )  # fmt: skip
    result = Result(fault, seed, events, logs=workers.logs)
    done = Disruptions()
    run = _Run(fault, services, workload, topic, group, fix_file, workers, result, done)
    try:
        config = {"min.insync.replicas": "2"} if services.replication >= 3 else None
        await create_topics(
            services.kafka, [topic], partitions=6, replication_factor=services.replication, config=config
        )
        run.database = await services.new_database(f"faults_{fault.name.lower()}_{suffix}")
        workers.env["EVENTQ_DATABASE_URL"] = run.database
        if fault.relays:
            await outbox.query(run.database, outbox.BUSINESS_TABLE)
            run.relays = outbox.relay_pool(services, run.database, workers.logs, size=fault.relays)
        await run.phases(rng, publish_s)
    except Exception as exc:  # noqa: BLE001 - a harness error or a bound exceeded fails the run, with its seed
        result.verdicts["run"] = checks.Verdict(False, f"{type(exc).__name__}: {exc}")
    finally:
        if run.published is not None and not run.published.done():
            run.published.cancel()
        try:
            await services.heal()
        except Exception as exc:  # noqa: BLE001
            result.verdicts["heal"] = checks.Verdict(False, f"services could not be healed: {exc}")
        await workers.stop()
        pools = [("", workers)]
        if run.relays is not None:
            await run.relays.stop()
            pools.append(("relay ", run.relays))
        deaths = [(prefix, d) for prefix, pool in pools for d in pool.deaths]
        unexpected = [f"{p}{d.how} (pid {d.pid})" for p, d in deaths if d.how.startswith("exit") or "timed" in d.how]
        result.verdicts["daemons"] = checks.Verdict(
            not unexpected, ", ".join(unexpected) or "no daemon exited or hung unless the fault made it"
        )
        result.actions = done.actions
        result.deaths = dict(Counter(p + d.how for p, d in deaths))
        result.workers_started = workers.started
        result.relays_started = run.relays.started if run.relays is not None else 0
        result.seconds = time.monotonic() - started
    return result


FULL_RUN_EVENTS = 10_000  # from this size on, every planned crash point must be hit


@dataclass
class _Run:
    """The state of one fault run while its phases go on."""

    fault: Fault
    services: Services
    workload: Workload
    topic: str
    group: str
    fix_file: Path
    workers: Workers
    result: Result
    done: Disruptions
    database: str = ""
    published: asyncio.Task[PublishLog] | None = None
    relays: Workers | None = None  # the outbox rows' relay processes
    copies: Counter[str] = field(default_factory=Counter)  # event id -> its records in the source topic

    async def phases(self, rng: random.Random, publish_s: float) -> None:
        services, workers, result, done, topic = self.services, self.workers, self.result, self.done, self.topic
        workers.start()
        await workers.wait_started(workers.size)  # they created the dead-letter topic by now
        dlt = f"{topic}.dlt"
        partitions, replication = (await topic_shapes(services.kafka, [dlt]))[dlt]
        result.facts.append(f"dead-letter topic created by the daemons: {partitions} partitions, "
                            f"replication factor {replication}")  # fmt: skip
        scene = Scene(services, workers, topic, rng, window_s=publish_s + 4.0, done=done, relays=self.relays,
                      database=self.database)  # fmt: skip
        if self.fault.prepare is not None:
            await self.fault.prepare(scene)
        rate = len(self.workload.events) / publish_s
        if self.relays is None:
            self.published = asyncio.create_task(publish(services.kafka, topic, self.workload, rate=rate))
            await self.fault.inject(scene)
        else:
            await self.write_and_relay(scene, rate)
        injected = len(done.actions)
        await services.heal()
        workers.size = 3
        await workers.disarm()
        for pid, (_, until) in list(workers.paused.items()):
            if until is None:
                workers.resume(pid)
        healed = time.monotonic()
        assert self.published is not None
        log = await self.published
        result.resent = log.resent
        if log.errors:
            who = "publisher send" if self.relays is None else "writer transaction"
            result.facts.append(f"{who} errors {len(log.errors)}, first: {log.errors[0]}")
        emptied = None
        if self.relays is not None:
            emptied = await outbox.wait_empty(self.database, LAG_BOUND_S)
        await wait_drained(services, self.group, topic, timeout=LAG_BOUND_S)
        result.drain_s = time.monotonic() - healed
        workers.reap()
        await self.check_after_drain(log, dlt, injected)
        if isinstance(log, outbox.WriteLog):
            await self.check_outbox(log, emptied)
        await self.check_replay(dlt)

    def applied(self, injected: int, replay_kill: tuple[bool, int] | None = None) -> checks.Verdict:
        """Did the fault happen as planned? A fault that silently did nothing proves nothing."""
        fault, done, poison = self.fault, self.done, len(self.workload.poison)
        if done.not_applied:
            return checks.Verdict(False, "; ".join(done.not_applied))
        if replay_kill is not None:
            killed, handled = replay_kill
            figure = f"replay killed -9 with {handled}/{poison} poison events handled again; rerun resumed"
            return checks.Verdict(killed and 0 < handled < poison, figure if killed else "replay ended before the kill")
        if fault.crash_plan:
            planned = {spec.split(":")[0] for spec in fault.crash_plan}
            fired = {d.how.removeprefix("crash:") for d in self.workers.deaths if d.how.startswith("crash:")}
            kills = sum(d.how == "kill-9" for d in self.workers.deaths)
            missing = sorted(planned - fired)
            figure = f"crash points hit: {', '.join(sorted(fired)) or 'none'}; kill -9: {kills}"
            # A short run (the CI subset) may end its fault window before a worker reaches
            # its K-th slice: that crash point was legitimately not reached, and says so.
            # It still needs one crash point and one kill -9; full runs need every point.
            enough = not missing if len(self.workload.events) >= FULL_RUN_EVENTS else bool(fired)
            if missing:
                figure += f"; never hit: {missing}" + ("" if enough else " (required in full runs)")
            return checks.Verdict(enough and kills > 0, figure)
        if fault.name == "baseline" or fault.kill_replay:
            return checks.Verdict(True, "nothing injected" if fault.name == "baseline" else "see the replay")
        return checks.Verdict(injected > 0, f"{injected} actions")

    async def check_after_drain(self, log: PublishLog, dlt: str, injected: int) -> None:
        """P0 (applied), P1–P5 and the first part of P6, on what the drained run left."""
        w, v, kafka = self.workload, self.result.verdicts, self.services.kafka
        snap = await checks.Snapshot.take(self.database, self.group)
        letters = await checks.read_letters(kafka, dlt)
        source = await checks.read_source(kafka, self.topic, self.copies)
        if not self.fault.kill_replay:
            v["applied"] = self.applied(injected)
        v["P1 no loss"] = checks.no_loss(w, log.acked, snap, letters)
        v["P2 one record"] = checks.one_record(w, snap)
        v["P3 side effects"], self.result.explained_duplicates = checks.side_effects(
            snap, self.workers.deaths, self.workers.paused, self.done.db_outages
        )
        drain = self.result.drain_s
        v["P4 lag 0"] = checks.Verdict(drain <= LAG_BOUND_S, f"{drain:.1f} s after healing (bound {LAG_BOUND_S:.0f} s)")
        relay_failures = outbox.log_events(self.relays)["outbox.send_failed"] if self.relays is not None else 0
        if self.fault.consumer_disrupted or log.resent or relay_failures:
            why = "consumers crashed" if self.fault.consumer_disrupted else f"publisher re-sent {log.resent}"
            if relay_failures and not self.fault.consumer_disrupted:
                # Documented in eventq/outbox/relay.py: rows of a failed send may follow later ones.
                measured = checks.key_order(w, snap).figure
                why = f"relay sends failed {relay_failures} times; failed rows may follow later ones; {measured}"
            v["P5 key order"] = checks.Verdict(True, f"n/a ({why})")
        else:
            v["P5 key order"] = checks.key_order(w, snap)
        v["P6 dead-lettered"] = checks.poison_dead_lettered(w, letters, source)
        self.result.facts.append(
            f"dead letters {len(letters)} for {len(w.poison)} poison events and {len(w.malformed)} malformed records"
        )

    async def write_and_relay(self, scene: Scene, rate: float) -> None:
        """The outbox rows: start the writer and inject the fault; the relays start before both,
        or with ``relay_backlog`` once that many rows wait (the fault already watching)."""
        relays, backlog = self.relays, self.fault.relay_backlog
        assert relays is not None
        if not backlog:
            relays.start()
            await relays.wait_started(relays.size)
        self.published = asyncio.create_task(outbox.write(self.database, self.topic, self.workload, rate=rate))
        injecting: asyncio.Future[None] = asyncio.ensure_future(self.fault.inject(scene))
        try:
            if backlog:
                rows = await outbox.wait_rows(self.database, backlog, until=self.published)
                relays.start()
                self.done.note(f"relays started with {rows} rows waiting")
                await relays.wait_started(relays.size)
            await injecting
        finally:
            injecting.cancel()

    async def check_outbox(self, log: outbox.WriteLog, emptied: float | None) -> None:
        """P7–P9: committed events on the topic, rolled-back ones nowhere, the outbox empty."""
        v, relays = self.result.verdicts, self.relays
        assert relays is not None
        snap = await checks.Snapshot.take(self.database, self.group)
        v["P7 on topic"] = checks.on_topic(log.acked, log.rolled_back, self.copies)
        republished = sum(1 for i in log.acked if self.copies[i] > 1)
        kills = sum(d.how == "kill-9" for d in relays.deaths)
        applied = v["applied"]
        figure = f"{applied.figure}; relay kill -9 {kills}; events in the topic more than once {republished}"
        if self.fault.must_republish and not republished and applied.ok:
            figure += " (required: no kill landed between the broker's append and the delete)"
        v["applied"] = checks.Verdict(applied.ok and (republished > 0 or not self.fault.must_republish), figure)
        v["P8 no rollback"] = checks.none_rolled_back(log.rolled_back, log.acked, self.copies, snap)
        if emptied is None:
            v["P9 outbox empty"] = checks.Verdict(False, f"not empty {LAG_BOUND_S:.0f} s after the writer finished: "
                                                         f"{await outbox.leftovers(self.database)}")  # fmt: skip
        else:
            v["P9 outbox empty"] = checks.Verdict(True, f"empty {emptied:.1f} s after the writer finished")
        self.result.facts.append(log.summary())
        warnings = outbox.log_events(relays)
        shown = ", ".join(f"{event} {n}" for event, n in warnings.most_common()) or "none"
        self.result.facts.append(f"relay warnings and errors (log events): {shown}")

    async def check_replay(self, dlt: str) -> None:
        """The rest of P6: deploy the fix, replay (F8: kill the first replay mid-run, rerun), replay again."""
        v, w, done, database, group = self.result.verdicts, self.workload, self.done, self.database, self.group
        self.fix_file.touch()
        if self.fault.kill_replay:
            seen: list[int] = []

            async def some_replayed() -> bool:
                seen.append(await _handled(database, group, w.poison))
                return 0 < seen[-1] < len(w.poison)

            outcome = await replay(self.services, dlt, "r1", kill_when=some_replayed, rate="1/s")
            done.note(f"replay r1: {outcome}")
            v["applied"] = self.applied(0, (outcome.startswith("killed"), seen[-1] if seen else 0))
        done.note(f"replay r1: {await replay(self.services, dlt, 'r1')}")
        await _until_replayed(database, group, w)
        await wait_drained(self.services, group, self.topic, timeout=120, tolerance=1)
        after_replay = await checks.Snapshot.take(database, group)
        v["P6 replayed once"] = checks.replayed_once(w, after_replay)
        done.note(f"second replay r2: {await replay(self.services, dlt, 'r2')}")
        await wait_drained(self.services, group, self.topic, timeout=120, tolerance=1)
        v["P6 2nd replay no-op"] = checks.unchanged(after_replay, await checks.Snapshot.take(database, group))


async def _handled(database: str, group: str, ids: frozenset[str]) -> int:
    """How many of ``ids`` have a ``handled`` row in ``group``."""
    import asyncpg

    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE consumer_group = $1 AND outcome = 'handled' "
            "AND event_id = ANY($2::uuid[])",
            group, list(ids),
        )  # fmt: skip
        return count
    finally:
        await conn.close()


async def _until_replayed(database: str, group: str, workload: Workload, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await _handled(database, group, workload.poison) < len(workload.poison):
        if time.monotonic() > deadline:
            raise TimeoutError(f"replayed poison events not all handled after {timeout:.0f} s")
        await asyncio.sleep(0.5)
