"""The services a fault run starts, breaks and heals: its own Kafka (one node or three),
its own PostgreSQL cluster, and supervised pools of daemon processes (consumers, and
for the outbox rows ``eventq outbox relay``).

Nothing here touches the dev stack: every port is a free one and every file lives under
the run's own folder, so killing a broker or PostgreSQL here disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from eventq.config import KafkaSettings
from eventq_dev.devstack import StackSettings
from eventq_dev.devstack.kafka import KafkaBroker, ensure_kafka_jars
from eventq_dev.devstack.postgres import PostgresCluster, cluster_home
from tests.conftest import create_database, free_ports

REPO = Path(__file__).resolve().parents[2]


class Services:
    """A Kafka broker (or three-node cluster) and a PostgreSQL cluster of the suite's own."""

    def __init__(self, home: Path, *, nodes: int = 1) -> None:
        self.home = home
        self.nodes = nodes
        lib = ensure_kafka_jars(StackSettings.from_env())
        if nodes == 1:
            port, controller = free_ports(2)
            self.broker: KafkaBroker | None = KafkaBroker(
                home=home / "kafka", port=port, controller_port=controller, lib=lib
            )
            self.cluster = None
            self.bootstrap = f"127.0.0.1:{port}"
        else:
            from tests.faults.cluster import KafkaCluster

            self.broker = None
            self.cluster = KafkaCluster(home / "kafka", lib, size=nodes)
            self.bootstrap = self.cluster.bootstrap_servers
        [pg_port] = free_ports(1)
        self.postgres = PostgresCluster(home=cluster_home(home), port=pg_port)

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, client_id="eventq-faults")

    @property
    def replication(self) -> int:
        return 3 if self.nodes >= 3 else 1

    async def start(self) -> None:
        if self.broker is not None:
            await asyncio.to_thread(self.broker.start, 90)
        else:
            assert self.cluster is not None
            await asyncio.to_thread(self.cluster.start, 120)
        await asyncio.to_thread(self.postgres.start)

    async def stop(self) -> None:
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        await asyncio.to_thread(self.postgres.stop)

    async def discard(self) -> None:
        """Stop everything and delete PostgreSQL's folder, which may lie under /tmp (see
        ``cluster_home``) rather than under ``home``."""
        await self.stop()
        shutil.rmtree(self.postgres.home, ignore_errors=True)

    async def heal(self) -> None:
        """Everything running and unpaused again (a no-op for what is already up)."""
        main = self.postgres.pid()
        if main is not None:
            self.resume_postgres([main, *_children(main)])
        await self.start()  # KafkaCluster.start launches only the nodes that are down

    async def new_database(self, name: str) -> str:
        """Create database ``name`` with eventq's tables and ``side_effects``; its URL."""
        admin = await asyncpg.connect(self.postgres.dsn)
        try:
            url = await create_database(admin, self.postgres.dsn, name)
        finally:
            await admin.close()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE side_effects (serial bigserial PRIMARY KEY, event_id uuid NOT NULL, "
                "attempt integer NOT NULL, pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        finally:
            await conn.close()
        return url

    async def crash_postgres(self) -> None:
        """``pg_ctl stop -m immediate``: PostgreSQL dies without a checkpoint (crash recovery on start)."""
        await asyncio.to_thread(self.postgres.crash)

    def pause_postgres(self) -> list[int]:
        """SIGSTOP the postmaster, then every backend, until no new one appears; the pids stopped.

        The postmaster goes first so that it forks no backend that would escape the pause.
        """
        main = self.postgres.pid()
        if main is None:
            return []
        _signal(main, signal.SIGSTOP)
        stopped = [main]
        while True:
            new = [pid for pid in _children(main) if pid not in stopped]
            if not new:
                return stopped
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            stopped += new

    def resume_postgres(self, pids: list[int]) -> None:
        for pid in pids:
            _signal(pid, signal.SIGCONT)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised name) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Death:
    """A worker process that ended other than by a clean stop."""

    pid: int
    how: str  # kill-9, crash:POINT, exit:N
    at: float  # unix time


CONSUMER_COMMAND = (sys.executable, "-m", "tests.faults.worker")
RELAY_COMMAND = (str(Path(sys.executable).parent / "eventq"), "--log-json", "outbox", "relay")


@dataclass
class Workers:
    """A supervised pool of daemon processes, restarted when they die (like systemd's
    Restart=always), with the disruptions the harness caused recorded for the checks.

    By default the suite's consumer daemons; ``command``, ``name`` and ``ready`` make it
    a pool of outbox relays (the real CLI) instead.
    """

    env: dict[str, str]
    logs: Path
    size: int = 3
    command: tuple[str, ...] = CONSUMER_COMMAND
    name: str = "worker"  # logs are <name>-<n>.log
    ready: bytes = b'"event": "consumer.started"'  # the log line that says a process is up
    crash_plan: list[str] = field(default_factory=list)  # FAULT_CRASH specs for the next starts
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    deaths: list[Death] = field(default_factory=list)
    paused: dict[int, tuple[float, float | None]] = field(default_factory=dict)  # pid -> (from, until)
    crash_specs: dict[int, str] = field(default_factory=dict)  # pid -> its FAULT_CRASH
    started: int = 0
    _supervisor: asyncio.Task[None] | None = None

    @property
    def crash_log(self) -> Path:
        return self.logs / "crashes.log"

    def spawn(self) -> int:
        env = {**os.environ, **self.env, "FAULT_CRASH_LOG": str(self.crash_log)}
        env.pop("FAULT_CRASH", None)
        spec = self.crash_plan.pop(0) if self.crash_plan else None
        if spec is not None:
            env["FAULT_CRASH"] = spec
        self.started += 1
        out = open(self.logs / f"{self.name}-{self.started}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            list(self.command),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        self.procs[proc.pid] = proc
        if spec is not None:
            self.crash_specs[proc.pid] = spec
        return proc.pid

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for _ in range(self.size - len(self.procs)):
            self.spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.reap()
            while len(self.procs) < self.size:
                self.spawn()

    def reap(self) -> None:
        """Record and forget workers that exited."""
        exited = [pid for pid, proc in self.procs.items() if proc.poll() is not None]
        crashes = _read_crashes(self.crash_log)  # read after polling: a crash logs before it exits
        for pid in exited:
            code = self.procs.pop(pid).returncode
            if pid in crashes:
                point, at = crashes[pid]
                self.deaths.append(Death(pid, f"crash:{point}", at))
            elif not any(d.pid == pid for d in self.deaths):
                self.deaths.append(Death(pid, f"exit:{code}", time.time()))

    def kill9(self, pid: int) -> None:
        self.deaths.append(Death(pid, "kill-9", time.time()))
        _signal(pid, signal.SIGKILL)
        self.procs.pop(pid).wait()  # gone: no second kill, and the supervisor replaces it at once

    def pause(self, pid: int) -> None:
        self.paused[pid] = (time.time(), None)
        _signal(pid, signal.SIGSTOP)

    def resume(self, pid: int) -> None:
        _signal(pid, signal.SIGCONT)
        since, _ = self.paused[pid]
        self.paused[pid] = (since, time.time())

    async def wait_started(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` processes logged ``ready`` (consumers: topics checked and created)."""
        deadline = time.monotonic() + timeout
        while True:
            started = sum(1 for log in self.logs.glob(f"{self.name}-*.log") if self.ready in log.read_bytes())
            if started >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {started} of {count} {self.name}s up within {timeout:.0f} s ({self.logs})")
            await asyncio.sleep(0.2)

    async def disarm(self) -> None:
        """No crash after healing: drop the crash points not handed out yet, and replace the
        workers still waiting for theirs (stopped gracefully; the supervisor starts plain ones)."""
        self.crash_plan.clear()
        pending = [pid for pid in self.procs if pid in self.crash_specs]
        await asyncio.gather(*(self.stop_one(pid) for pid in pending))

    async def stop_one(self, pid: int, timeout: float = 40) -> None:
        """Graceful stop (SIGTERM), as an orchestrator scaling down would do."""
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.deaths.append(Death(pid, "kill-9 (stop timed out)", time.time()))
            proc.kill()
            proc.wait()

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        for pid in list(self.procs):
            _signal(pid, signal.SIGCONT)
        self.reap()
        await asyncio.gather(*(self.stop_one(pid) for pid in list(self.procs)))


def _read_crashes(path: Path) -> dict[int, tuple[str, float]]:
    crashes: dict[int, tuple[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            pid, point, at = line.split()
            crashes[int(pid)] = (point, float(at))
    return crashes
