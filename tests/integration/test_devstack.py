from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from eventq.errors import DevStackError
from eventq_dev.devstack import StackSettings, port_accepts, process_matches
from eventq_dev.devstack.commands import down, postgres_cluster, status
from eventq_dev.devstack.kafka import KafkaBroker
from eventq_dev.devstack.postgres import PostgresCluster, cluster_home

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
        [sys.executable, "-m", "eventq_dev.devstack.commands", command],
        env={**os.environ, **settings_env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _stack_env(stack_dir: Path, kafka_lib: Path) -> dict[str, str]:
    kafka_port, controller_port, pg_port = _free_ports(3)
    return {
        "EVENTQ_STACK_DIR": str(stack_dir),
        "EVENTQ_DEV_KAFKA_PORT": str(kafka_port),
        "EVENTQ_DEV_CONTROLLER_PORT": str(controller_port),
        "EVENTQ_DEV_PG_PORT": str(pg_port),
        "EVENTQ_KAFKA_LIB": str(kafka_lib),
        "EVENTQ_DATABASE_URL": "",  # empty counts as unset: the stack runs its own
    }


def _evaluated(env: dict[str, str], up: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``env`` as a shell has it after ``eval "$(eventq dev up)"``."""
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
    )
    return {**env, **exported}


def _pids(settings: StackSettings) -> dict[str, int | None]:
    return {s.name: s.pid for s in status(settings)}


def _broken_postgres_conf(settings: StackSettings) -> Path:
    """Move the own cluster's postgresql.conf aside, so that its next start fails; returns it."""
    conf = cluster_home(settings.dir) / "data" / "postgresql.conf"
    conf.rename(conf.with_name("postgresql.conf.aside"))
    return conf


UNREACHABLE_URL = "postgresql://app@127.0.0.1:1/app"  # port 1: nothing listens there


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, kafka_lib: Path) -> Iterator[dict[str, str]]:
    """The environment of one second dev stack shared by the tests below (one broker start)."""
    stack_dir = tmp_path_factory.mktemp("devstack") / "stack"
    env = _stack_env(stack_dir, kafka_lib)
    yield env
    settings = StackSettings.from_env(env)
    down(settings)
    _remove_cluster_home(cluster_home(settings.dir), settings.dir)


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_dev_up_is_idempotent_also_in_the_shell_it_configured(stack: dict[str, str]) -> None:
    """`eventq dev up` again in a shell that ran `eval "$(eventq dev up)"` finds both of its services running."""
    first = _dev("up", stack)
    settings = StackSettings.from_env(stack)
    pids = _pids(settings)
    shell = _evaluated(stack, first)

    second = _dev("up", shell)

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"export EVENTQ_BOOTSTRAP_SERVERS=127.0.0.1:{settings.kafka_port}",
        f"export EVENTQ_DATABASE_URL=postgresql://postgres@127.0.0.1:{settings.pg_port}/eventq",
    ]
    assert second.returncode == 0, second.stderr
    assert "kafka     already running" in second.stderr
    assert "postgres  already running" in second.stderr  # its own DSN is not "external"
    assert second.stdout == first.stdout
    assert _pids(settings) == pids and None not in pids.values()
    assert _dev("status", shell).returncode == 0


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_failed_dev_up_leaves_services_that_were_running_alone(stack: dict[str, str]) -> None:
    """A `dev up` that fails (unreachable external database, PostgreSQL not starting) never stops a
    Kafka that was already running."""
    assert _dev("up", stack).returncode == 0
    settings = StackSettings.from_env(stack)
    pids = _pids(settings)

    external = _dev("up", {**stack, "EVENTQ_DATABASE_URL": UNREACHABLE_URL})
    assert _pids(settings) == pids

    postgres_cluster(settings).stop()
    conf = _broken_postgres_conf(settings)
    try:
        broken = _dev("up", stack)
        kafka_pid_after = _pids(settings)["kafka"]
    finally:
        conf.with_name("postgresql.conf.aside").rename(conf)

    assert external.returncode == 1
    assert external.stderr.splitlines() == [
        "Error: EVENTQ_DATABASE_URL points at 127.0.0.1:1, which does not accept connections; start "
        "that server, or unset EVENTQ_DATABASE_URL to let `eventq dev up` run a local PostgreSQL"
    ]
    assert broken.returncode == 1
    assert "starting PostgreSQL failed" in broken.stderr
    assert kafka_pid_after == pids["kafka"]


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_dev_down_in_the_shell_dev_up_configured_stops_both(stack: dict[str, str]) -> None:
    """With EVENTQ_DATABASE_URL set to the stack's own DSN, `eventq dev down` stops Kafka and
    PostgreSQL, and is safe twice."""
    shell = _evaluated(stack, _dev("up", stack))
    settings = StackSettings.from_env(stack)
    kafka_pid = _pids(settings)["kafka"]
    assert shell["EVENTQ_DATABASE_URL"] == postgres_cluster(settings).dsn

    first = _dev("down", shell)
    second = _dev("down", shell)

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert not any(s.running for s in status(settings))
    assert not port_accepts(settings.kafka_port) and not port_accepts(settings.pg_port)
    assert kafka_pid is not None and not process_matches(kafka_pid, "kafka.Kafka")
    assert _dev("status", shell).returncode == 1


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.slow
def test_failed_dev_up_stops_the_kafka_it_started(tmp_path: Path, kafka_lib: Path) -> None:
    """A `dev up` whose database part fails leaves no Kafka running: with an unreachable external
    database none is started, and one started before PostgreSQL fails is stopped again."""
    env = _stack_env(tmp_path / "stack", kafka_lib)
    settings = StackSettings.from_env(env)
    home = cluster_home(settings.dir)
    try:
        external = _dev("up", {**env, "EVENTQ_DATABASE_URL": UNREACHABLE_URL})
        after_external = port_accepts(settings.kafka_port), _pids(settings)["kafka"]
        # A data folder without postgresql.conf: initdb is skipped and pg_ctl start fails.
        (home / "data").mkdir(parents=True)
        (home / "data" / "PG_VERSION").write_text("15\n")
        broken = _dev("up", env)

        assert external.returncode == 1
        assert external.stderr.splitlines() == [
            "Error: EVENTQ_DATABASE_URL points at 127.0.0.1:1, which does not accept connections; start "
            "that server, or unset EVENTQ_DATABASE_URL to let `eventq dev up` run a local PostgreSQL"
        ]
        assert after_external == (False, None)
        assert broken.returncode == 1
        started = re.search(r"kafka     started on \S+ \(pid (\d+)", broken.stderr)
        assert started is not None, broken.stderr
        error = next(line for line in broken.stderr.splitlines() if line.startswith("Error: "))
        assert error.startswith("Error: PostgreSQL: starting PostgreSQL failed (exit 1); the Kafka broker")
        assert error.endswith("fix that and run `eventq dev up` again")
        assert not process_matches(int(started[1]), "kafka.Kafka")
        assert not port_accepts(settings.kafka_port)
        assert not any(s.running for s in status(settings))
    finally:
        down(settings)
        _remove_cluster_home(home, settings.dir)
