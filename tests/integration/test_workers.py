"""`eventq consume --workers N` against the real broker and database: supervised member processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest

from eventq.config import KafkaSettings
from tests.conftest import TopicFactory, free_ports
from tests.integration.consumer_kit import order, publish, rows

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
T = TypeVar("T")


class Supervised:
    """An `eventq consume --workers N` process, its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[bytes] = []
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            if line.startswith(b"{") and f'"event": "{name}"'.encode() in line:
                found.append(orjson.loads(line))
        return found

    async def exit_code(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    def tail(self) -> str:
        return b"".join(self.lines[-60:]).decode(errors="replace")


async def start(args: list[str], env: dict[str, str]) -> Supervised:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventq.cli", "consume", "tests.integration.sample_app:app", *args,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    return Supervised(proc)


def environment(kafka: KafkaSettings, database: str, topic: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "EVENTQ_DATABASE_URL": database,
        "EVENTQ_TOPICS": topic, "EVENTQ_SESSION_TIMEOUT_S": "6", "EVENTQ_SHUTDOWN_GRACE_S": "5", **extra,
    }


async def eventually(predicate: Callable[[], Awaitable[T | None]], timeout: float = 60.0) -> T:
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):
            await asyncio.sleep(0.3)
    return result


async def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body) if body.startswith(b"{") else {}


async def ready(port: int) -> dict[str, Any] | None:
    try:
        code, body = await get(port, "/readyz")
    except OSError:
        return None
    return body if code == 200 else None


async def row_count(database: str, group: str, n: int) -> bool:
    return len(await rows(database, group)) >= n


async def test_two_workers_share_the_partitions_handle_every_event_once_and_stop_on_sigterm(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """Two workers both get partitions (/readyz 200 lists both), record every event exactly once, and a SIGTERM to
    the supervisor stops both cleanly and exits 0."""
    topic = await new_topic(partitions=4)
    await publish(kafka_settings, topic, [order(n) for n in range(400)])
    [port] = free_ports(1)
    group = f"workers-{uuid.uuid4().hex[:8]}"
    env = environment(kafka_settings, database, topic, SAMPLE_HANDLER_SLEEP_S="0.01")
    supervisor = await start(["--group", group, "--workers", "2", "--health-port", str(port)], env)
    try:
        body = await eventually(lambda: ready(port))
        await eventually(lambda: row_count(database, group, 400))
    finally:
        supervisor.proc.send_signal(signal.SIGTERM)
    code = await supervisor.exit_code(60)

    assert code == 0, supervisor.tail()
    assert [(w["worker"], w["ready"], w["state"]) for w in body["workers"]] == [
        (0, True, "running"), (1, True, "running")
    ]
    assert len({w["pid"] for w in body["workers"]}) == 2 and all(w["port"] for w in body["workers"])
    recorded = await rows(database, group)
    assert len(recorded) == 400 == len({r["event_id"] for r in recorded})
    assert {r["partition"] for r in recorded} == {0, 1, 2, 3}
    assert [(e["worker"], e.get("code")) for e in supervisor.events("supervisor.child_stopped")] in (
        [(0, 0), (1, 0)], [(1, 0), (0, 0)]
    )
    assert len(supervisor.events("consumer.stopped")) == 2
    assert not supervisor.events("supervisor.child_killed")


async def test_a_worker_killed_with_sigkill_is_restarted_and_no_event_is_lost(
    kafka_settings: KafkaSettings, database: str, new_topic: TopicFactory
) -> None:
    """A worker killed with SIGKILL is logged and started again, and every event still ends with exactly one row."""
    topic = await new_topic(partitions=4)
    await publish(kafka_settings, topic, [order(n) for n in range(600)])
    [port] = free_ports(1)
    group = f"workers-{uuid.uuid4().hex[:8]}"
    env = environment(kafka_settings, database, topic, SAMPLE_HANDLER_SLEEP_S="0.02")
    supervisor = await start(["--group", group, "--workers", "2", "--health-port", str(port)], env)
    try:
        body = await eventually(lambda: ready(port))
        victim = body["workers"][0]["pid"]
        await eventually(lambda: row_count(database, group, 50))
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: asyncio.sleep(0, supervisor.events("supervisor.child_exited")))
        await eventually(lambda: asyncio.sleep(0, len(supervisor.events("supervisor.child_started")) == 3))
        await eventually(lambda: row_count(database, group, 600), timeout=120)
        after = await eventually(lambda: ready(port))
    finally:
        supervisor.proc.send_signal(signal.SIGTERM)
    code = await supervisor.exit_code(60)

    assert code == 0, supervisor.tail()
    [exited] = supervisor.events("supervisor.child_exited")
    assert (exited["worker"], exited["pid"], exited["signal"], exited["restart_in_s"]) == (0, victim, "SIGKILL", 1.0)
    assert after["workers"][0]["restarts"] == 1 and after["workers"][0]["pid"] != victim
    recorded = await rows(database, group)
    assert len(recorded) == 600 == len({r["event_id"] for r in recorded})


async def test_a_worker_failing_at_start_ends_the_supervisor_with_its_code_and_error_without_restarts(
    kafka_settings: KafkaSettings, database: str
) -> None:
    """A worker that fails its start-up checks (a missing topic) is not restarted: the supervisor exits 1 with the
    worker's one-line error."""
    topic = f"test.missing.{uuid.uuid4().hex[:8]}"
    env = environment(kafka_settings, database, topic)
    supervisor = await start(["--workers", "2"], env)
    code = await supervisor.exit_code(90)

    assert code == 1, supervisor.tail()
    last = supervisor.lines[-1].decode()
    assert last.startswith("Error: ") and topic in last and "eventq topics create" in last, last
    assert "at start; not restarted" in last
    assert len(supervisor.events("supervisor.child_started")) <= 2
    assert all(e["restart_in_s"] is None for e in supervisor.events("supervisor.child_exited"))
