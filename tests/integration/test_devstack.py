from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eventq.devstack import StackSettings, port_accepts
from eventq.devstack.commands import down, status
from eventq.devstack.kafka import KafkaBroker
from eventq.devstack.postgres import PostgresCluster, cluster_home
from eventq.errors import DevStackError

REPO = Path(__file__).resolve().parents[2]

from tests.conftest import free_ports as _free_ports  # noqa: E402  (shared with other broker tests)


def _remove_cluster_home(home: Path, stack_dir: Path) -> None:
    # A home outside the stack folder is the /tmp fallback, which tmp_path does not clean.
    if not home.is_relative_to(stack_dir):
        shutil.rmtree(home, ignore_errors=True)


async def _admin(broker: KafkaBroker) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
    await admin.start()
    return admin


@pytest.mark.kafka
@pytest.mark.slow
async def test_broker_serves_admin_requests_and_stops(broker: KafkaBroker) -> None:
    """A started broker answers describe_cluster on its port, and after stop() it is gone."""
    await asyncio.to_thread(broker.start)
    admin = await _admin(broker)
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()

    assert broker.is_running()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [
        ("127.0.0.1", broker.port)
    ]

    await asyncio.to_thread(broker.stop)

    assert not broker.is_running()
    assert not port_accepts(broker.port)


@pytest.mark.kafka
@pytest.mark.slow
async def test_restart_keeps_topics(broker: KafkaBroker) -> None:
    """A broker stopped and started again with the same home still has the topics it had."""
    await asyncio.to_thread(broker.start)
    admin = await _admin(broker)
    try:
        await admin.create_topics([NewTopic("devstack.kept", 2, 1)])
    finally:
        await admin.close()
    await asyncio.to_thread(broker.stop)

    await asyncio.to_thread(broker.start)
    admin = await _admin(broker)
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()

    assert "devstack.kept" in topics


@pytest.mark.kafka
@pytest.mark.slow
async def test_killed_broker_is_not_running_and_restarts(broker: KafkaBroker) -> None:
    """After kill() the broker is not running (despite its pid file) and start() recovers it."""
    await asyncio.to_thread(broker.start)

    broker.kill()

    assert not broker.is_running()
    await asyncio.to_thread(broker.start)
    assert broker.is_running()


@pytest.mark.kafka
def test_taken_port_is_named(tmp_path: Path, kafka_lib: Path) -> None:
    """Starting a broker on a port another process listens on fails naming that port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = KafkaBroker(
            home=tmp_path / "kafka",
            port=port,
            controller_port=_free_ports(1)[0],
            lib=kafka_lib,
        )

        with pytest.raises(DevStackError, match=f"port {port} "):
            broker.start()

    assert not broker.is_running()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PostgresCluster]:
    # tmp_path is private to root, so as root this exercises the /tmp fallback.
    stack_dir = tmp_path / "stack"
    cluster = PostgresCluster(home=cluster_home(stack_dir), port=_free_ports(1)[0])
    yield cluster
    cluster.stop()
    _remove_cluster_home(cluster.home, stack_dir)


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_cluster_serves_its_database_and_stops(
    cluster: PostgresCluster,
) -> None:
    """A started cluster accepts connections to the eventq database at its dsn; stop() ends it."""
    await asyncio.to_thread(cluster.start)
    connection = await asyncpg.connect(cluster.dsn)
    try:
        database = await connection.fetchval("SELECT current_database()")
    finally:
        await connection.close()

    assert database == "eventq"
    await asyncio.to_thread(cluster.stop)
    assert not cluster.is_running()


def _dev(
    command: str, settings_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventq.devstack.commands", command],
        env={**os.environ, **settings_env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_dev_up_is_idempotent_and_down_stops_everything(
    tmp_path: Path, kafka_lib: Path
) -> None:
    """`eventq dev up` twice leaves one running stack; `down` stops it, and is safe twice."""
    kafka_port, controller_port, pg_port = _free_ports(3)
    env = {
        "EVENTQ_STACK_DIR": str(tmp_path / "stack"),
        "EVENTQ_DEV_KAFKA_PORT": str(kafka_port),
        "EVENTQ_DEV_CONTROLLER_PORT": str(controller_port),
        "EVENTQ_DEV_PG_PORT": str(pg_port),
        "EVENTQ_KAFKA_LIB": str(kafka_lib),
        "EVENTQ_DATABASE_URL": "",  # empty counts as unset: the stack runs its own
    }
    settings = StackSettings.from_env(env)
    try:
        first = _dev("up", env)
        pids = [s.pid for s in status(settings)]
        second = _dev("up", env)

        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            f"export EVENTQ_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}",
            f"export EVENTQ_DATABASE_URL=postgresql://postgres@127.0.0.1:{pg_port}/eventq",
        ]
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        assert [s.pid for s in status(settings)] == pids
        assert _dev("status", env).returncode == 0

        assert _dev("down", env).returncode == 0
        assert _dev("down", env).returncode == 0

        assert not any(s.running for s in status(settings))
        assert _dev("status", env).returncode == 1
    finally:
        down(settings)
        _remove_cluster_home(cluster_home(settings.dir), settings.dir)
