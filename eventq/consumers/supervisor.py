"""``eventq consume --workers N``: run N daemon processes of one consumer group and keep them running.

Each worker is ``eventq consume`` itself, re-executed as a fresh interpreter
(``python -m eventq.cli <the same arguments> --workers 1 --health-port 0``): a normal
daemon and a normal member of the group, which Kafka gives its share of the partitions.
A fresh interpreter rather than ``fork`` because a forked child inherits the parent's
event loop, sockets and threads mid-state (asyncio, aiokafka and the OpenTelemetry
exporters all keep some), and rather than ``multiprocessing`` spawn because re-running
the command gives the worker exactly the daemon's start-up, option parsing and exit
codes, with nothing to pickle. Children are started in process groups of their own, so
a terminal's Ctrl-C reaches only this supervisor, which passes it on once, as SIGTERM.

Guarantees (tests/integration/test_workers.py, tests/unit/test_supervisor.py):

- A worker that dies (exit code other than 0, or a signal) is started again after
  1 s, doubling to 30 s for repeated failures, back to 1 s once a worker has run 60 s;
  each exit is one ``supervisor.child_exited`` line (pid, code or signal, restart delay),
  each start one ``supervisor.child_started``.
- A worker that exits 0 (``--until-idle`` finished) is not restarted; the supervisor
  exits 0 when every worker has.
- A worker that fails before its daemon started the first time (exit 1: a missing
  topic, an unreachable broker, a database without tables), or exits 2 (wrong usage)
  at any time, is not restarted: every worker is stopped and the supervisor exits with
  that code, ending with the worker's own ``Error:`` line. "Started" is the worker's
  report of its health port, which the daemon binds only after its start-up checks,
  rather than a timer: an interpreter alone can take a second to import eventq.
- SIGTERM or SIGINT: every worker gets SIGTERM and up to ``shutdown_grace_s`` plus
  :data:`STOP_MARGIN_S` to stop (finish, commit, leave the group); a worker still
  running then is killed (``supervisor.child_killed``) and the supervisor exits 1,
  else 0.
- With a health port, ``/livez`` is 200 while every worker that should run is live
  (or starting, or waiting out its back-off), ``/readyz`` 200 only when every one is
  ready, each with ``{"workers": [{"worker", "pid", "port", "state", "live", "ready",
  "restarts"}]}``; workers are asked every second (``/readyz`` asks again before a 200).
  ``/metrics`` is every worker's metrics (as of the last second) with a ``worker`` label,
  plus ``eventq_supervisor_restarts_total`` and ``eventq_supervisor_worker_up``.

A worker whose supervisor disappears (killed with SIGKILL) notices within a second and
stops as if sent SIGTERM (:func:`serve_supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog

from eventq.consumers.health import HealthServer, Status

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from eventq.consumers.daemon import Consumer

log = structlog.get_logger("eventq.supervisor")

PORT_FILE_ENV = "EVENTQ_WORKER_PORT_FILE"  # set by the supervisor: where a worker writes its health port
STOP_MARGIN_S = 10.0  # beyond the grace: the final commit, leaving the group, closing clients
_POLL_S = 1.0
_ASK_TIMEOUT_S = 5.0  # a worker's /readyz may ask its services again first (at most 2 s)
_LINE_LIMIT = 1 << 20
_WORKER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Verdict:
    """What to do about a worker that exited."""

    action: Literal["restart", "done", "fatal"]
    delay_s: float = 0.0


@dataclass
class RestartPolicy:
    """When one worker is started again; ``clock`` is injectable for tests.

    Delay ``initial_s · 2^(n-1)`` for the n-th failure in a row, at most ``max_s``; a
    worker that ran ``reset_after_s`` before failing starts the count again.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    starts: int = 0
    _started_at: float = field(default=0.0, repr=False)

    def started(self) -> None:
        self.starts += 1
        self._started_at = self.clock()

    def exited(self, returncode: int, *, reported_start: bool) -> Verdict:
        """The verdict for exit status ``returncode`` (negative: killed by that signal)."""
        if returncode == 0:
            return Verdict("done")
        if returncode == 2 or (returncode > 0 and self.starts == 1 and not reported_start):
            return Verdict("fatal")
        if self.clock() - self._started_at >= self.reset_after_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return Verdict("restart", delay)


@dataclass
class _Worker:
    index: int
    policy: RestartPolicy
    port_file: Path
    proc: asyncio.subprocess.Process | None = None
    state: Literal["starting", "running", "backoff", "done", "failed", "stopped"] = "starting"
    port: int | None = None
    live: bool = False
    ready: bool = False
    restarts: int = 0
    metrics: str = ""
    error: str | None = None  # the last "Error: ..." line it printed

    @property
    def should_run(self) -> bool:
        return self.state in ("starting", "running", "backoff")

    @property
    def healthy(self) -> bool:  # for /livez: starting and back-off count as live
        return self.state != "running" or self.port is None or self.live

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.index, "pid": self.proc.pid if self.proc else None, "port": self.port,
            "state": self.state, "live": self.should_run and self.healthy, "ready": self.ready,
            "restarts": self.restarts,
        }


@dataclass(frozen=True)
class Outcome:
    """How the supervisor ended: the exit code, and the line to print for a failure."""

    code: int
    message: str | None = None


class Supervisor:
    """Runs ``command`` as ``workers`` processes until stopped, or until all exit 0."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        shutdown_grace_s: float,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        env: Mapping[str, str] | None = None,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
    ) -> None:
        self.command = list(command)
        self.shutdown_grace_s = shutdown_grace_s
        self.health_host = health_host
        self.health_port = health_port
        self.health: HealthServer | None = None
        self._env = dict(os.environ if env is None else env)
        self._tmp = Path(tempfile.mkdtemp(prefix="eventq-workers-"))
        self.workers = [_Worker(i, policy(), self._tmp / f"worker-{i}.port") for i in range(workers)]
        self._stopping = asyncio.Event()
        self._fatal: tuple[_Worker, int] | None = None
        self._killed = 0

    def stop(self) -> None:
        """Stop every worker (safe from a signal handler); :meth:`run` then returns."""
        self._stopping.set()

    async def run(self) -> Outcome:
        try:
            return await self._run()
        finally:
            for worker in self.workers:
                worker.port_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._tmp.rmdir()

    async def _run(self) -> Outcome:
        poller: asyncio.Task[None] | None = None
        if self.health_port is not None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_WorkerMetrics(self.workers))
            self.health = HealthServer(_SupervisorStatus(self.workers), self.health_host, self.health_port,
                                       registry=registry, confirm=self._ask_ready)  # fmt: skip
            await self.health.start()
            poller = asyncio.create_task(self._poll(), name="eventq-supervisor-poll")
        keepers = [asyncio.create_task(self._keep(w), name=f"eventq-worker-{w.index}") for w in self.workers]
        stopping: asyncio.Future[Any] = asyncio.create_task(self._stopping.wait())
        all_done: asyncio.Future[Any] = asyncio.gather(*keepers)
        try:
            await asyncio.wait([stopping, all_done], return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                await self._terminate(keepers)
            await all_done
        finally:
            stopping.cancel()
            if poller is not None:
                poller.cancel()
            if self.health is not None:
                await self.health.stop()
        if self._fatal is not None:
            worker, code = self._fatal
            why = (worker.error or "").removeprefix("Error: ") or "see its log above"
            return Outcome(code, f"{why} (worker {worker.index} exited with code {code} at start; not restarted)")
        if self._killed:
            return Outcome(1, f"{self._killed} worker(s) did not stop within the shutdown grace and were killed")
        return Outcome(0)

    async def _keep(self, worker: _Worker) -> None:
        """Start the worker, and again after each failure, until it is done or the supervisor stops."""
        while not self._stopping.is_set():
            worker.port_file.unlink(missing_ok=True)
            worker.port, worker.live, worker.ready, worker.metrics = None, False, False, ""
            env = {**self._env, PORT_FILE_ENV: str(worker.port_file), "EVENTQ_HEALTH_HOST": _WORKER_HOST}
            proc = await asyncio.create_subprocess_exec(
                *self.command, env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
                process_group=0,  # not in the terminal's group: Ctrl-C reaches the supervisor only
            )
            worker.proc, worker.state = proc, "running"
            worker.policy.started()
            log.info("supervisor.child_started", worker=worker.index, pid=proc.pid, start=worker.policy.starts)
            if self._stopping.is_set():  # stop() came while it was being started
                _signal(proc, signal.SIGTERM)
            assert proc.stderr is not None
            await self._relay(worker, proc.stderr)
            code = await proc.wait()
            worker.ready = worker.live = False
            if self._stopping.is_set():
                worker.state = "stopped"
                log.info("supervisor.child_stopped", worker=worker.index, pid=proc.pid, **_status(code))
                return
            verdict = worker.policy.exited(code, reported_start=worker.port_file.exists())
            report = log.info if verdict.action == "done" else log.error
            report("supervisor.child_exited", worker=worker.index, pid=proc.pid, **_status(code),
                   restart_in_s=verdict.delay_s if verdict.action == "restart" else None)  # fmt: skip
            if verdict.action == "done":
                worker.state = "done"
                return
            if verdict.action == "fatal":
                worker.state = "failed"
                self._fatal = self._fatal or (worker, code)
                self.stop()
                return
            worker.state, worker.restarts = "backoff", worker.restarts + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), verdict.delay_s)

    async def _relay(self, worker: _Worker, stream: asyncio.StreamReader) -> None:
        """Copy the worker's stderr (its log) to ours, line by line; remember its ``Error:`` line."""
        out = sys.stderr.buffer
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: pass on what there is
                line = await stream.read(_LINE_LIMIT)
            if not line:
                return
            out.write(line)
            out.flush()
            if line.startswith(b"Error: "):
                worker.error = line.decode(errors="replace").strip()

    async def _terminate(self, keepers: list[asyncio.Task[None]]) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        log.info("supervisor.stopping", workers=len(running), grace_s=self.shutdown_grace_s)
        for proc in running:
            _signal(proc, signal.SIGTERM)
        _, late = await asyncio.wait(keepers, timeout=self.shutdown_grace_s + STOP_MARGIN_S)
        if late:
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    log.warning("supervisor.child_killed", worker=worker.index, pid=worker.proc.pid,
                                after_s=self.shutdown_grace_s + STOP_MARGIN_S)  # fmt: skip
                    _signal(worker.proc, signal.SIGKILL)
                    self._killed += 1

    # -- health --------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.gather(*(self._ask(w, ("/livez", "/readyz", "/metrics")) for w in self.workers))
            await asyncio.sleep(_POLL_S)

    async def _ask_ready(self) -> None:
        await asyncio.gather(*(self._ask(w, ("/readyz",)) for w in self.workers))

    async def _ask(self, worker: _Worker, paths: tuple[str, ...]) -> None:
        if worker.state != "running":
            return
        if worker.port is None:
            with contextlib.suppress(OSError, ValueError):
                worker.port = int(worker.port_file.read_text())
            if worker.port is None:
                return
        for path in paths:
            ok, body = await _get(_WORKER_HOST, worker.port, path)
            if path == "/livez":
                worker.live = ok
            elif path == "/readyz":
                worker.ready = ok
            elif ok:
                worker.metrics = body.decode(errors="replace")


class _SupervisorStatus(Status):
    """Health of the workers, as :class:`HealthServer` asks it of a daemon's :class:`Status`."""

    def __init__(self, workers: list[_Worker]) -> None:
        super().__init__()
        self._workers = workers

    @property
    def live(self) -> bool:
        return all(w.healthy for w in self._workers if w.should_run)

    @property
    def ready(self) -> bool:
        running = [w for w in self._workers if w.should_run]
        return bool(running) and all(w.ready for w in running)

    def as_dict(self) -> dict[str, Any]:
        return {"live": self.live, "ready": self.ready, "workers": [w.as_dict() for w in self._workers]}


class _WorkerMetrics:
    """A prometheus_client collector: the workers' last scraped metrics, each sample labelled ``worker``."""

    def __init__(self, workers: list[_Worker]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.parser import text_string_to_metric_families

        restarts = CounterMetricFamily("eventq_supervisor_restarts", "Worker restarts", labels=["worker"])
        up = GaugeMetricFamily("eventq_supervisor_worker_up", "1 if the worker process runs", labels=["worker"])
        families: dict[str, Metric] = {}
        for worker in self._workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
            up.add_metric([str(worker.index)], 1 if worker.state == "running" else 0)
            for family in text_string_to_metric_families(worker.metrics):
                merged = families.setdefault(family.name, family)
                labelled = [s._replace(labels={**s.labels, "worker": str(worker.index)}) for s in family.samples]
                if merged is family:
                    family.samples = labelled
                else:
                    merged.samples.extend(labelled)
        yield restarts
        yield up
        yield from families.values()


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _status(returncode: int) -> dict[str, Any]:
    if returncode < 0:
        return {"signal": signal.Signals(-returncode).name}
    return {"code": returncode}


async def _get(host: str, port: int, path: str) -> tuple[bool, bytes]:
    """(200?, body) of ``GET path`` on a worker's health port; (False, b"") if it does not answer in time."""
    try:
        async with asyncio.timeout(_ASK_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                await writer.drain()
                response = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False, b""
    head, _, body = response.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200"), body


def worker_command(argv: Sequence[str], *, json_logs: bool) -> list[str]:
    """The command that runs one worker: ``eventq <argv> --workers 1 --health-port 0`` (the last
    occurrence of an option wins), logging in the supervisor's format (its stderr is a pipe)."""
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    args[end:end] = ["--workers", "1", "--health-port", "0"]
    return [sys.executable, "-m", "eventq.cli", "--log-json" if json_logs else "--log-console", *args]


async def serve_supervisor(daemon: Consumer) -> None:
    """In a worker: report the daemon's health port once bound, then stop the daemon if the supervisor goes.

    Does nothing outside a supervisor (no ``EVENTQ_WORKER_PORT_FILE``).
    """
    path = os.environ.get(PORT_FILE_ENV)
    if not path:
        return
    parent = os.getppid()
    while daemon.health is None or daemon.health.port == 0:
        await asyncio.sleep(0.05)
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(orjson.dumps(daemon.health.port))
    tmp.replace(path)  # the supervisor never reads half a number
    while os.getppid() == parent:
        await asyncio.sleep(_POLL_S)
    log.warning("supervisor.gone", pid=parent)
    daemon.stop()
