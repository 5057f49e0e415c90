"""The dev stack as a whole (``up``/``down``/``status``) and the ``eventq dev`` commands.

``eventq dev up`` prints progress on stderr and only ``export ...`` lines on stdout, so
``eval "$(eventq dev up)"`` configures the current shell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

from eventq.errors import DevStackError, EventqError
from eventq_dev.devstack import StackSettings, port_accepts, port_is_free
from eventq_dev.devstack.kafka import (
    KAFKA_VERSION,
    KafkaBroker,
    default_kafka_lib,
    ensure_kafka_jars,
    kafka_jars_installed,
    require_java,
)
from eventq_dev.devstack.postgres import PostgresCluster, cluster_home, find_pg_bindir

__all__ = ["ServiceStatus", "StackInfo", "dev", "down", "status", "up"]

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    """One service of the stack as seen right now."""

    name: str
    running: bool
    port: int | None
    pid: int | None
    data_dir: Path | None
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class StackInfo:
    """What ``up()`` leaves behind: where to connect."""

    bootstrap_servers: str
    database_url: str
    services: tuple[ServiceStatus, ...]

    external_database: bool = False

    @property
    def exports(self) -> list[str]:
        """Shell lines that point eventq at this stack.

        An external database is not exported: its URL is already in the environment
        that named it, and it may carry a password, which is never printed.
        """
        lines = [f"export EVENTQ_BOOTSTRAP_SERVERS={self.bootstrap_servers}"]
        if not self.external_database:
            lines.append(f"export EVENTQ_DATABASE_URL={self.database_url}")
        return lines


def kafka_broker(settings: StackSettings) -> KafkaBroker:
    """The stack's broker (``<dir>/kafka``), whether or not it is running."""
    return KafkaBroker(
        home=settings.dir / "kafka",
        port=settings.kafka_port,
        controller_port=settings.controller_port,
        lib=settings.kafka_lib or default_kafka_lib(settings.dir),
    )


def postgres_cluster(settings: StackSettings) -> PostgresCluster:
    """The stack's own cluster (see :func:`cluster_home`), whether or not it is running."""
    return PostgresCluster(home=cluster_home(settings.dir), port=settings.pg_port)


def up(settings: StackSettings, *, progress: Progress | None = None) -> StackInfo:
    """Make sure Kafka and PostgreSQL are running; idempotent and fast when they are.

    Fetches the Kafka jars on first use. With ``settings.database_url`` set, PostgreSQL
    is not started, only checked to be reachable (before anything is started). A failed
    call leaves nothing half-running: if PostgreSQL fails after this call started the
    broker, that broker is stopped again; services that were running before the call are
    never stopped. Raises :class:`DevStackError` or :class:`~eventq.errors.ConfigError`
    with a message that says what to do.
    """
    say = progress or (lambda _message: None)
    settings.dir.mkdir(parents=True, exist_ok=True)
    broker = kafka_broker(settings)
    cluster = postgres_cluster(settings)
    # The cheap checks come first, so that they fail before an 8 s broker start.
    if settings.database_url is not None:
        _check_external_database(settings.database_url)
    elif not cluster.is_running():
        _check_port(settings.pg_port, "PostgreSQL", "EVENTQ_DEV_PG_PORT")
        find_pg_bindir()

    started_kafka = False
    if broker.is_running():
        say(
            f"kafka     already running on {settings.bootstrap_servers} (pid {broker.pid()})"
        )
    else:
        try:
            _start_kafka(settings, broker, say)
        except BaseException:
            # A broker launched but interrupted before it was ready (Ctrl-C) must not stay.
            broker.stop()
            raise
        started_kafka = True

    try:
        database_url = _ensure_postgres(settings, cluster, say)
    except BaseException as exc:
        if not started_kafka:
            raise
        say(f"kafka     stopping the broker this command started (pid {broker.pid()})")
        broker.stop()
        if not isinstance(exc, (EventqError, OSError)):
            raise  # Ctrl-C and the like: cleaned up, then passed on as they are
        raise DevStackError(_rolled_back_message(exc)) from exc
    return StackInfo(
        bootstrap_servers=settings.bootstrap_servers,
        database_url=database_url,
        external_database=settings.database_url is not None,
        services=tuple(status(settings)),
    )


def _start_kafka(settings: StackSettings, broker: KafkaBroker, say: Progress) -> None:
    _check_port(settings.kafka_port, "Kafka broker", "EVENTQ_DEV_KAFKA_PORT")
    _check_port(settings.controller_port, "Kafka controller", "EVENTQ_DEV_CONTROLLER_PORT")
    require_java()
    if not kafka_jars_installed(settings):
        say(f"kafka     fetching Kafka {KAFKA_VERSION} jars with mvn (once; ~30 s)...")
        began = time.monotonic()
        ensure_kafka_jars(settings)
        say(f"kafka     jars in {broker.lib} ({time.monotonic() - began:.1f} s)")
    else:
        ensure_kafka_jars(settings)
    began = time.monotonic()
    broker.start()
    say(f"kafka     started on {settings.bootstrap_servers} (pid {broker.pid()}, "
        f"{time.monotonic() - began:.1f} s)")  # fmt: skip


def _ensure_postgres(settings: StackSettings, cluster: PostgresCluster, say: Progress) -> str:
    if settings.database_url is not None:
        say("postgres  external database reachable (EVENTQ_DATABASE_URL)")
        return settings.database_url
    if cluster.is_running():
        say(f"postgres  already running on port {cluster.port} (pid {cluster.pid()})")
    else:
        began = time.monotonic()
        cluster.start()
        say(f"postgres  started on port {cluster.port} (pid {cluster.pid()}, "
            f"{time.monotonic() - began:.1f} s)")  # fmt: skip
    return cluster.dsn


def _rolled_back_message(exc: BaseException) -> str:
    # One line that says what happened and what to do; the details (pg_ctl's output, the
    # end of the log) follow on the next lines when the original error had them.
    first, _, details = str(exc).partition("\n")
    line = (
        f"PostgreSQL: {first.rstrip(': ')}; the Kafka broker this command had started was "
        "stopped again (nothing is left running); fix that and run `eventq dev up` again"
    )
    return f"{line}\n{details}" if details else line


def down(settings: StackSettings) -> None:
    """Stop the broker and the stack's own PostgreSQL; data is kept. Idempotent.

    Stops whatever of this stack's folder is running, whatever ``EVENTQ_DATABASE_URL``
    says (so a shell configured by ``eval "$(eventq dev up)"`` stops what ``up`` started).
    An external database (``EVENTQ_DATABASE_URL``) is never touched: only the cluster
    whose data lives in this stack's folder is stopped.
    """
    errors: list[str] = []
    try:
        kafka_broker(settings).stop()
    except (OSError, DevStackError) as exc:
        errors.append(f"kafka: {exc}")
    try:
        postgres_cluster(settings).stop()
    except (OSError, DevStackError) as exc:
        errors.append(f"postgres: {exc}")
    if errors:
        raise DevStackError("could not stop the dev stack:\n" + "\n".join(errors))


def status(settings: StackSettings) -> list[ServiceStatus]:
    """The state of each service; never starts or stops anything."""
    broker = kafka_broker(settings)
    services = [
        ServiceStatus(
            name="kafka",
            running=broker.is_running(),
            port=settings.kafka_port,
            pid=broker.pid(),
            data_dir=broker.data_dir,
            note=f"log {broker.log_file}",
        )
    ]
    if settings.database_url is not None:
        services.append(
            ServiceStatus(
                name="postgres",
                running=_database_reachable(settings.database_url),
                port=urlsplit(settings.database_url).port or 5432,
                pid=None,
                data_dir=None,
                note="external (EVENTQ_DATABASE_URL)",
            )
        )
    else:
        cluster = postgres_cluster(settings)
        services.append(
            ServiceStatus(
                name="postgres",
                running=cluster.is_running(),
                port=settings.pg_port,
                pid=cluster.pid(),
                data_dir=cluster.data_dir,
                note=f"log {cluster.log_file}",
            )
        )
    return services


def _check_port(port: int, what: str, env_var: str) -> None:
    if not port_is_free(port):
        raise DevStackError(
            f"port {port} ({what}) is already in use by another process; stop it, or set "
            f"{env_var} to a free port"
        )


def _database_reachable(url: str) -> bool:
    parts = urlsplit(url)
    return port_accepts(
        parts.port or 5432, host=parts.hostname or "127.0.0.1", timeout=3
    )


def _check_external_database(url: str) -> None:
    if not _database_reachable(url):
        parts = urlsplit(url)
        raise DevStackError(
            f"EVENTQ_DATABASE_URL points at {parts.hostname or '127.0.0.1'}:"
            f"{parts.port or 5432}, which does not accept connections; start that server, "
            "or unset EVENTQ_DATABASE_URL to let `eventq dev up` run a local PostgreSQL"
        )


@click.group()
def dev() -> None:
    """Run a local Kafka broker and PostgreSQL for development (no Docker needed).

    Settings come from EVENTQ_STACK_DIR (default ./.eventq), EVENTQ_DEV_KAFKA_PORT
    (9092), EVENTQ_DEV_PG_PORT (54320), EVENTQ_DATABASE_URL and EVENTQ_KAFKA_LIB.
    """


@dev.command("up")
def up_command() -> None:
    """Start the stack (idempotent) and print the variables that point eventq at it."""
    try:
        info = up(
            StackSettings.from_env(), progress=lambda line: click.echo(line, err=True)
        )
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in info.exports:
        click.echo(line)


@dev.command("down")
def down_command() -> None:
    """Stop the stack; its data is kept for the next `eventq dev up`."""
    try:
        settings = StackSettings.from_env()
        down(settings)
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"dev stack in {settings.dir} stopped", err=True)


@dev.command("status")
def status_command() -> None:
    """Show each service; exit code 0 only if all of them are running."""
    try:
        services = status(StackSettings.from_env())
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
    for service in services:
        state = "running" if service.running else "stopped"
        pid = f"pid {service.pid}" if service.pid is not None else "pid -"
        data = f"data {service.data_dir}" if service.data_dir is not None else ""
        click.echo(
            f"{service.name:<9} {state:<8} port {service.port}  {pid}  {data}  {service.note}"
        )
    if not all(service.running for service in services):
        click.get_current_context().exit(1)


if __name__ == "__main__":
    dev()
