"""The faults of the suite: what each one breaks, how, and which duplicates it may cause.

A fault's ``inject`` runs while the workload is published and consumed, and returns when
its window is over; the harness then heals everything (:meth:`Services.heal`) and drains.
Every random choice (which worker, when, how long) comes from the run's seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from eventq.kafka import create_topics
from tests.faults.outbox import RELAY_BATCH
from tests.faults.relays import kill_one_of_two_relays, kill_relay_mid_batch
from tests.faults.stack import Services, Workers


@dataclass
class Disruptions:
    """What a fault did and when (unix times), for the report and for judging duplicates."""

    actions: list[str] = field(default_factory=list)
    db_outages: list[tuple[float, float]] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)  # why the fault did not happen as planned

    def note(self, text: str) -> None:
        self.actions.append(f"{time.strftime('%H:%M:%S')} {text}")


@dataclass
class Scene:
    """What a fault may act on during its window."""

    services: Services
    workers: Workers
    topic: str
    rng: random.Random
    window_s: float
    done: Disruptions
    relays: Workers | None = None  # the outbox rows' relay processes
    database: str = ""  # the run's database (the outbox rows watch their outbox table)

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlt"

    def until(self) -> float:
        return time.monotonic() + self.window_s

    def pick_worker(self, *, spare_crash_points: bool = False) -> int | None:
        """A random running worker (None if there is none to pick).

        ``spare_crash_points`` leaves out workers still waiting for their deterministic
        crash point, so a random kill does not pre-empt it.
        """
        pids = sorted(p for p in self.workers.procs if not (spare_crash_points and p in self.workers.crash_specs))
        return self.rng.choice(pids) if pids else None


Inject = Callable[[Scene], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    """One row of the matrix."""

    name: str
    title: str
    inject: Inject
    nodes: int = 1  # Kafka nodes
    consumer_disrupted: bool = False  # P5 (per-key order) is only checked when False
    crash_plan: tuple[str, ...] = ()  # deterministic crash points for the first worker starts
    kill_replay: bool = False  # F8: kill the replay CLI mid-run, then rerun it
    prepare: Inject | None = None  # runs after the daemons started, before anything is published
    relays: int = 0  # 0: the producer publishes the workload; N: it is written to the outbox, N relays publish it
    relay_backlog: int = 0  # the relays start once this many rows wait in the outbox (0: before the writer)
    must_republish: bool = False  # O1: some event must be in the topic twice (a kill between append and delete)


async def nothing(scene: Scene) -> None:
    await asyncio.sleep(scene.window_s)


async def kill_consumers(scene: Scene) -> None:
    """F1: kill -9 a random worker every 1.5–4 s (the supervisor starts a new one).

    Workers started with a crash point (``Fault.crash_plan``) are spared until they hit it.
    """
    end = scene.until()
    while True:
        await asyncio.sleep(scene.rng.uniform(1.5, 4.0))
        if time.monotonic() > end:
            return
        pid = scene.pick_worker(spare_crash_points=True)
        if pid is not None:
            scene.workers.kill9(pid)
            scene.done.note(f"kill -9 worker {pid}")


async def zombie(scene: Scene) -> None:
    """F2: SIGSTOP a worker past its session timeout and poll interval (17–20 s), then SIGCONT it."""
    end = scene.until()
    while time.monotonic() < end - 5:
        await asyncio.sleep(scene.rng.uniform(1.0, 3.0))
        pid = scene.pick_worker()
        if pid is None:
            continue
        pause = scene.rng.uniform(17.0, 20.0)  # session 6 s, max poll interval 15 s
        scene.workers.pause(pid)
        scene.done.note(f"SIGSTOP worker {pid} for {pause:.1f} s")
        await asyncio.sleep(pause)
        scene.workers.resume(pid)
        scene.done.note(f"SIGCONT worker {pid}")


async def rebalance_storm(scene: Scene) -> None:
    """F3: every 2–4 s add a worker or stop one gracefully (between 1 and 5 workers)."""
    end = scene.until()
    while True:
        await asyncio.sleep(scene.rng.uniform(2.0, 4.0))
        if time.monotonic() > end:
            break
        grow = scene.workers.size <= 1 or (scene.workers.size < 5 and scene.rng.random() < 0.5)
        if grow:
            scene.workers.size += 1
            pid = scene.workers.spawn()
            scene.done.note(f"add worker {pid} ({scene.workers.size})")
        else:
            stopping = scene.pick_worker()
            if stopping is None:
                continue
            pid = stopping
            scene.workers.size -= 1  # first, so the supervisor does not replace it
            scene.done.note(f"stop worker {pid} ({scene.workers.size})")
            await scene.workers.stop_one(pid)
    scene.workers.size = 3


async def kill_broker(scene: Scene) -> None:
    """F4: kill -9 the single broker, keep it down 3–8 s, restart it; repeated."""
    broker = scene.services.broker
    assert broker is not None
    end = scene.until()
    while time.monotonic() < end:
        await asyncio.sleep(scene.rng.uniform(2.0, 5.0))
        down = scene.rng.uniform(3.0, 8.0)
        await asyncio.to_thread(broker.kill)
        scene.done.note(f"kill -9 broker, down {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(broker.start, 90)
        scene.done.note("broker restarted")


async def kill_leader(scene: Scene) -> None:
    """F5: kill -9 the leader of a random partition, restart it 3–6 s later; repeated."""
    cluster = scene.services.cluster
    assert cluster is not None
    end = scene.until()
    while time.monotonic() < end:
        await asyncio.sleep(scene.rng.uniform(1.0, 3.0))
        partition = scene.rng.randrange(6)
        leader = await cluster.leader_of(scene.topic, partition)
        if leader < 0:
            continue
        await asyncio.to_thread(cluster.kill, leader)
        down = scene.rng.uniform(3.0, 6.0)
        scene.done.note(f"kill -9 node {leader} (leader of partition {partition}), down {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(cluster.restart, leader)
        scene.done.note(f"node {leader} restarted")
        await cluster.wait_healthy(scene.topic, 60)


async def crash_postgres(scene: Scene) -> None:
    """O4: crash PostgreSQL (pg_ctl stop -m immediate), keep it down 1–4 s, restart it; repeated."""
    services = scene.services
    end = scene.until()
    while time.monotonic() < end:
        await asyncio.sleep(scene.rng.uniform(2.0, 4.0))
        down = scene.rng.uniform(1.0, 4.0)
        started = time.time()
        await services.crash_postgres()
        scene.done.note(f"PostgreSQL crashed (stop -m immediate), down {down:.1f} s")
        await asyncio.sleep(down)
        await asyncio.to_thread(services.postgres.start)
        scene.done.note("PostgreSQL restarted")
        scene.done.db_outages.append((started, time.time()))


async def break_postgres(scene: Scene) -> None:
    """F6: crash PostgreSQL (pg_ctl stop -m immediate) and restart it; pause all its processes."""
    services = scene.services
    end = scene.until()
    crash = True
    while time.monotonic() < end:
        await asyncio.sleep(scene.rng.uniform(2.0, 4.0))
        down = scene.rng.uniform(1.0, 4.0)
        started = time.time()
        if crash:
            await services.crash_postgres()
            scene.done.note(f"PostgreSQL crashed (stop -m immediate), down {down:.1f} s")
            await asyncio.sleep(down)
            await asyncio.to_thread(services.postgres.start)
            scene.done.note("PostgreSQL restarted")
        else:
            pids = services.pause_postgres()
            scene.done.note(f"PostgreSQL paused (SIGSTOP {len(pids)} processes) for {down:.1f} s")
            await asyncio.sleep(down)
            services.resume_postgres(pids)
            scene.done.note("PostgreSQL resumed")
        scene.done.db_outages.append((started, time.time()))
        crash = not crash


async def delete_dead_letter_topic(scene: Scene) -> None:
    """F7, before publishing: delete the dead-letter topic the daemons created (auto-create is off).

    Deleting it before anything is dead-lettered keeps the letters: deleting a topic
    that holds some would destroy them, which is the operator's loss, not eventq's. The
    harness calls this once every daemon has started, so none creates it again.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**scene.services.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics([scene.dead_letter_topic])
    finally:
        await admin.close()
    scene.done.note(f"deleted {scene.dead_letter_topic}")


async def recreate_dead_letter_topic(scene: Scene) -> None:
    """F7: after the window (dead-letter publishes failing all along), create the topic again."""
    await asyncio.sleep(scene.window_s)
    created = await create_topics(
        scene.services.kafka, [scene.dead_letter_topic], partitions=6, replication_factor=scene.services.replication
    )
    if created:
        scene.done.note(f"recreated {scene.dead_letter_topic}")
    else:
        scene.done.not_applied.append(f"{scene.dead_letter_topic} existed again before the window ended")


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("baseline", "no fault", nothing),
        Fault(
            "F1",
            "consumer kill -9 at random moments + crash points",
            kill_consumers,
            consumer_disrupted=True,
            crash_plan=("after_handlers:3", "after_record:5", "before_commit:4", "after_handlers:9"),
        ),
        Fault("F2", "consumer paused past its poll interval (zombie)", zombie, consumer_disrupted=True),
        Fault("F3", "rebalance storm (workers added/stopped every 2-4 s)", rebalance_storm),
        Fault("F4", "single broker kill -9 and restart", kill_broker),
        Fault("F5", "3-node cluster: partition leader kill -9, repeated", kill_leader, nodes=3),
        Fault("F6", "PostgreSQL crash (immediate stop) and pause (SIGSTOP)", break_postgres),
        Fault(
            "F7",
            "dead-letter topic missing (auto-create off)",
            recreate_dead_letter_topic,
            prepare=delete_dead_letter_topic,
        ),
        Fault("F8", "replay CLI kill -9 mid-run, then rerun", nothing, kill_replay=True),
        Fault("O1", "outbox: relay kill -9 mid-round while it works through a backlog", kill_relay_mid_batch,
              relays=1, relay_backlog=5 * RELAY_BATCH, must_republish=True),
        Fault("O2", "outbox: two relays, one killed -9 mid-run; the other takes its shares",
              kill_one_of_two_relays, relays=2),
        Fault("O3", "outbox: single broker kill -9 and restart while the relay publishes", kill_broker, relays=1),
        Fault("O4", "outbox: PostgreSQL crash (immediate stop) while two relays publish", crash_postgres, relays=2),
    )
}
"""Every fault by name; ``baseline`` injects nothing; O1–O4 publish through the transactional outbox."""
