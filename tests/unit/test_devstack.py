from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventq.errors import ConfigError, DevStackError
from eventq_dev.devstack import StackSettings, commands
from eventq_dev.devstack.commands import dev
from eventq_dev.devstack.kafka import KafkaBroker, ensure_kafka_jars, require_java
from eventq_dev.devstack.postgres import cluster_home, find_pg_bindir


def _fake_java(folder: Path, version_line: str) -> Path:
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return java


def _stack_env(tmp_path: Path) -> dict[str, str | None]:
    sockets = [socket.socket() for _ in range(3)]
    try:
        for sock in sockets:  # all bound at once, so the three ports differ
            sock.bind(("127.0.0.1", 0))
        kafka, controller, pg = (str(sock.getsockname()[1]) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    return {
        "EVENTQ_STACK_DIR": str(tmp_path / "stack"),
        "EVENTQ_DEV_KAFKA_PORT": kafka,
        "EVENTQ_DEV_CONTROLLER_PORT": controller,
        "EVENTQ_DEV_PG_PORT": pg,
        "EVENTQ_DATABASE_URL": None,
        "EVENTQ_KAFKA_LIB": None,
    }


def test_from_env_defaults(tmp_path: Path) -> None:
    """Without variables the stack lives in ./.eventq on ports 9092/9093/54320 with its own PostgreSQL."""
    settings = StackSettings.from_env({}, cwd=tmp_path)

    assert settings.dir == (tmp_path / ".eventq").resolve()
    assert (settings.kafka_port, settings.controller_port, settings.pg_port) == (
        9092,
        9093,
        54320,
    )
    assert settings.database_url is None
    assert settings.kafka_lib is None
    assert settings.bootstrap_servers == "127.0.0.1:9092"


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    """Each documented variable sets its field; the controller port follows the broker port."""
    (tmp_path / "jars").mkdir()
    env = {
        "EVENTQ_STACK_DIR": "stack",
        "EVENTQ_DEV_KAFKA_PORT": "19092",
        "EVENTQ_DEV_PG_PORT": "15432",
        "EVENTQ_DATABASE_URL": "postgresql://app@db.internal:5432/eventq",
        "EVENTQ_KAFKA_LIB": "jars",
    }

    settings = StackSettings.from_env(env, cwd=tmp_path)

    assert settings.dir == (tmp_path / "stack").resolve()
    assert (settings.kafka_port, settings.controller_port, settings.pg_port) == (
        19092,
        19093,
        15432,
    )
    assert settings.database_url == "postgresql://app@db.internal:5432/eventq"
    assert settings.kafka_lib == (tmp_path / "jars").resolve()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTQ_DEV_KAFKA_PORT", "kafka"),
        ("EVENTQ_DEV_PG_PORT", "5432.5"),
        ("EVENTQ_DEV_PG_PORT", "70000"),
        ("EVENTQ_DEV_CONTROLLER_PORT", "0"),
    ],
)
def test_invalid_port_names_its_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    """A non-integer or out-of-range port is a ConfigError that names the variable."""
    with pytest.raises(ConfigError, match=variable):
        StackSettings.from_env({variable: value}, cwd=tmp_path)


def test_clashing_ports_are_rejected(tmp_path: Path) -> None:
    """Two services on one port is a ConfigError naming the variables to change."""
    with pytest.raises(ConfigError, match="EVENTQ_DEV_PG_PORT"):
        StackSettings.from_env({"EVENTQ_DEV_PG_PORT": "9093"}, cwd=tmp_path)


def test_non_postgres_database_url_is_rejected(tmp_path: Path) -> None:
    """EVENTQ_DATABASE_URL must be a postgresql:// URL."""
    with pytest.raises(ConfigError, match="EVENTQ_DATABASE_URL"):
        StackSettings.from_env({"EVENTQ_DATABASE_URL": "mysql://x@y/z"}, cwd=tmp_path)


def test_missing_kafka_lib_folder_is_rejected(tmp_path: Path) -> None:
    """EVENTQ_KAFKA_LIB must name an existing folder."""
    with pytest.raises(ConfigError, match="EVENTQ_KAFKA_LIB"):
        StackSettings.from_env({"EVENTQ_KAFKA_LIB": "nope"}, cwd=tmp_path)


def test_missing_java_says_how_to_install_it(tmp_path: Path) -> None:
    """With no java on PATH the error says which package to install."""
    with pytest.raises(DevStackError, match="apt-get install openjdk-17-jre-headless"):
        require_java({"PATH": str(tmp_path)})


@pytest.mark.parametrize(
    ("version_line", "major"),
    [('openjdk version "11.0.22" 2024-01-16', 11), ('java version "1.8.0_392"', 8)],
)
def test_old_java_is_rejected(tmp_path: Path, version_line: str, major: int) -> None:
    """A java older than 17 is refused with its version and the install hint."""
    _fake_java(tmp_path, version_line)

    with pytest.raises(DevStackError, match=f"Java {major};.*openjdk-17-jre-headless"):
        require_java({"PATH": str(tmp_path)})


def test_java_17_is_accepted(tmp_path: Path) -> None:
    """A java 17 on PATH is returned as the one to run."""
    java = _fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')

    assert require_java({"PATH": str(tmp_path)}) == str(java)


def test_mvn_missing_is_reported_when_jars_are_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetching jars without mvn on PATH fails with a message naming mvn."""
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(DevStackError, match="mvn not found"):
        ensure_kafka_jars(StackSettings(dir=tmp_path / "stack"))


def test_cached_jars_need_no_mvn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the lib folder exists it is returned without running Maven."""
    lib = tmp_path / "stack" / "kafka-4.4.0" / "lib"
    lib.mkdir(parents=True)
    (lib / "kafka_2.13-4.4.0.jar").touch()
    monkeypatch.setenv("PATH", str(tmp_path))

    assert ensure_kafka_jars(StackSettings(dir=tmp_path / "stack")) == lib


def test_second_slf4j_binding_is_rejected(tmp_path: Path) -> None:
    """A lib folder with another slf4j binding next to log4j's is refused, naming the jar."""
    (tmp_path / "kafka_2.13-4.4.0.jar").touch()
    (tmp_path / "slf4j-reload4j-1.7.36.jar").touch()
    settings = StackSettings(dir=tmp_path / "stack", kafka_lib=tmp_path)

    with pytest.raises(DevStackError, match="slf4j-reload4j-1.7.36.jar"):
        ensure_kafka_jars(settings)


def test_stale_pid_file_is_not_a_running_broker(tmp_path: Path) -> None:
    """A pid file whose pid belongs to another program does not count as a running broker."""
    broker = KafkaBroker(home=tmp_path, port=1, controller_port=2, lib=tmp_path)
    (tmp_path / "broker.pid").write_text(f"{os.getpid()}\n")

    assert not broker.is_running()


def test_zombie_broker_is_not_running(tmp_path: Path) -> None:
    """A matching process counts as running while alive and not once it is a zombie."""
    broker = KafkaBroker(home=tmp_path, port=1, controller_port=2, lib=tmp_path)
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka",
         str(tmp_path / "server.properties")]
    )  # fmt: skip
    try:
        # Popen returns while the child is still inside execve, when /proc/<pid>/cmdline
        # can still read empty; wait for the new argv to appear.
        deadline = time.monotonic() + 10
        while b"kafka.Kafka" not in Path(f"/proc/{fake.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the fake broker's argv never appeared"
            time.sleep(0.01)
        (tmp_path / "broker.pid").write_text(f"{fake.pid}\n")
        assert broker.is_running()

        os.kill(fake.pid, signal.SIGKILL)
        while (
            "Z" not in Path(f"/proc/{fake.pid}/stat").read_text().rpartition(")")[2][:3]
        ):
            time.sleep(0.01)  # not reaped yet: a zombie

        assert not broker.is_running()
    finally:
        fake.kill()
        fake.wait()


def test_missing_postgres_binaries_say_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pg_config or /usr/lib/postgresql/*/bin the error names the package."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(glob, "glob", lambda pattern: [])

    with pytest.raises(DevStackError, match="apt-get install postgresql-15"):
        find_pg_bindir()


def test_cluster_home_falls_back_to_tmp_when_postgres_cannot_reach_it(
    tmp_path: Path,
) -> None:
    """As root, a stack folder behind a private directory puts PostgreSQL under /tmp instead."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    stack = private / "stack"

    home = cluster_home(stack)

    if os.geteuid() == 0:
        assert home.parent == Path("/tmp") and home.name.startswith("eventq-pg-")
        assert cluster_home(stack) == home
    else:
        assert home == stack / "postgres"


def test_cli_reports_missing_java_without_traceback(tmp_path: Path) -> None:
    """`eventq dev up` without java prints `Error: ...` and exits 1, with no traceback."""
    env = {**_stack_env(tmp_path), "PATH": str(tmp_path), "JAVA_HOME": None}

    result = CliRunner().invoke(dev, ["up"], env=env)

    assert result.exit_code == 1
    assert "Error: java not found" in result.output
    assert "Traceback" not in result.output


def test_cli_rejects_invalid_settings() -> None:
    """An invalid variable makes every `eventq dev` command exit 1 naming it."""
    result = CliRunner().invoke(dev, ["status"], env={"EVENTQ_DEV_KAFKA_PORT": "x"})

    assert result.exit_code == 1
    assert "Error: EVENTQ_DEV_KAFKA_PORT='x' is not a port number" in result.output


def test_cli_status_of_a_stopped_stack_exits_1(tmp_path: Path) -> None:
    """`eventq dev status` shows both services stopped and exits 1 when nothing runs."""
    result = CliRunner().invoke(dev, ["status"], env=_stack_env(tmp_path))

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["kafka", "stopped"]
    assert lines[1].split()[:2] == ["postgres", "stopped"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:15432/eventq",
        "postgres://postgres@localhost:15432/eventq",
    ],
)
def test_the_stacks_own_dsn_is_not_an_external_database(tmp_path: Path, url: str) -> None:
    """EVENTQ_DATABASE_URL naming the stack's own PostgreSQL (what `dev up` exports) counts as unset."""
    settings = StackSettings.from_env({"EVENTQ_DEV_PG_PORT": "15432", "EVENTQ_DATABASE_URL": url}, cwd=tmp_path)

    assert settings.database_url is None
    assert StackSettings(dir=tmp_path, pg_port=15432, database_url=url).database_url is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:54320/eventq",  # another stack's port
        "postgresql://postgres@db.internal:15432/eventq",
        "postgresql://app@127.0.0.1:15432/eventq",
        "postgresql://postgres@127.0.0.1:15432/other",
        "postgresql://postgres:secret@127.0.0.1:15432/eventq",
    ],
)
def test_any_other_database_url_stays_external(tmp_path: Path, url: str) -> None:
    """A URL that differs from the stack's own DSN in host, port, user, password or database is external."""
    settings = StackSettings.from_env({"EVENTQ_DEV_PG_PORT": "15432", "EVENTQ_DATABASE_URL": url}, cwd=tmp_path)

    assert settings.database_url == url


def test_unreachable_external_database_fails_before_anything_starts(tmp_path: Path) -> None:
    """`dev up` with an unreachable EVENTQ_DATABASE_URL fails in one line before it even looks for java."""
    env = {**_stack_env(tmp_path), "EVENTQ_DATABASE_URL": "postgresql://app@127.0.0.1:1/app", "PATH": str(tmp_path)}

    result = CliRunner().invoke(dev, ["up"], env=env)

    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: EVENTQ_DATABASE_URL points at 127.0.0.1:1, which does not accept connections; start that "
        "server, or unset EVENTQ_DATABASE_URL to let `eventq dev up` run a local PostgreSQL"
    ]


class FakeService:
    """The part of KafkaBroker/PostgresCluster that `up` uses; ``fail`` makes start() raise it."""

    def __init__(self, *, running: bool = False, fail: str | None = None) -> None:
        self.running, self.fail = running, fail
        self.calls: list[str] = []
        self.lib, self.port, self.dsn = Path("/nowhere"), 1, "postgresql://postgres@127.0.0.1:1/eventq"

    def is_running(self) -> bool:
        return self.running

    def pid(self) -> int | None:
        return 4242 if self.running else None

    def start(self) -> None:
        self.calls.append("start")
        if self.fail is not None:
            raise DevStackError(self.fail)
        self.running = True

    def stop(self) -> None:
        self.calls.append("stop")
        self.running = False


@pytest.fixture
def fake_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[StackSettings, FakeService, FakeService]:
    """`up`'s settings with a fake broker and cluster, and no java, jars or PostgreSQL binaries needed."""
    broker, cluster = FakeService(), FakeService()
    monkeypatch.setattr(commands, "kafka_broker", lambda settings: broker)
    monkeypatch.setattr(commands, "postgres_cluster", lambda settings: cluster)
    for name in ("require_java", "ensure_kafka_jars", "find_pg_bindir"):
        monkeypatch.setattr(commands, name, lambda *args: None)
    monkeypatch.setattr(commands, "kafka_jars_installed", lambda settings: True)
    monkeypatch.setattr(commands, "status", lambda settings: [])
    env = {k: v for k, v in _stack_env(tmp_path).items() if v is not None}
    return StackSettings.from_env(env), broker, cluster


def test_postgres_failing_after_up_started_kafka_stops_that_kafka(
    fake_stack: tuple[StackSettings, FakeService, FakeService],
) -> None:
    """When PostgreSQL fails after `up` started the broker, that broker is stopped and the error says what to do."""
    settings, broker, cluster = fake_stack
    cluster.fail = "starting PostgreSQL failed (exit 1):\npg_ctl: could not start server"

    with pytest.raises(DevStackError) as raised:
        commands.up(settings)

    assert broker.calls == ["start", "stop"] and not broker.running
    first, details = str(raised.value).split("\n", 1)
    assert first == (
        "PostgreSQL: starting PostgreSQL failed (exit 1); the Kafka broker this command had started was "
        "stopped again (nothing is left running); fix that and run `eventq dev up` again"
    )
    assert details == "pg_ctl: could not start server"


def test_postgres_failing_never_stops_a_kafka_that_was_already_running(
    fake_stack: tuple[StackSettings, FakeService, FakeService],
) -> None:
    """A broker running before `up` was called stays running when PostgreSQL then fails."""
    settings, broker, cluster = fake_stack
    broker.running = True
    cluster.fail = "starting PostgreSQL failed (exit 1):\npg_ctl: could not start server"

    with pytest.raises(DevStackError, match="^starting PostgreSQL failed"):
        commands.up(settings)

    assert broker.calls == [] and broker.running


def test_interrupted_up_stops_the_kafka_it_started(
    fake_stack: tuple[StackSettings, FakeService, FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while PostgreSQL starts stops the broker this call started and is passed on unchanged."""
    settings, broker, cluster = fake_stack

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "start", interrupted)

    with pytest.raises(KeyboardInterrupt):
        commands.up(settings)

    assert broker.calls == ["start", "stop"] and not broker.running
