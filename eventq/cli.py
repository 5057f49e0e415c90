"""The ``eventq`` command line.

With :mod:`eventq.clikit` and the command groups it adds, the only place that
configures logging (structlog) and the garbage collector, installs signal handlers,
runs ``asyncio.run`` and turns errors into exit codes: 0 done, 1 failed (printed as one line
saying what to do, never a traceback unless ``--traceback``), 2 wrong usage (click's own), 130 interrupted.

Options override the ``EVENTQ_*`` variables, which the settings classes' ``from_env``
read (see :mod:`eventq.clikit`); no option reads a variable itself.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import click
import orjson

from eventq.clikit import (
    TRACEBACK_HINT,
    Group,
    database_options,
    database_settings,
    kafka_options,
    kafka_settings,
    one_line,
    option,
    origin,
    run,
    settings,
    telemetry_from_env,
)
from eventq.consumers import store
from eventq.consumers.settings import CONSUMER, ConsumerSettings
from eventq.database import connect
from eventq.dlq.commands import dlq
from eventq.errors import EventqError
from eventq.kafka import create_topics
from eventq.migrations import migrate as migrate_database
from eventq.outbox.commands import outbox
from eventq.producers import Producer, ProducerSettings
from eventq.producers.settings import PRODUCER
from eventq.schemas import Event
from eventq.telemetry.logs import configure_logging


def tune_gc_for_daemon() -> None:
    """Garbage collection for a long-running consumer (process-wide, so only the CLI does it).

    Objects alive at start-up (modules, schemas, clients) are frozen out of every
    collection, and the youngest generation is collected after 20,000 allocations
    instead of 700: a batch allocates a few objects per event, and the default
    thresholds spent ~15% of a no-op consumer's CPU in collections
    (docs/adr/0006-consumer-daemon.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_PARTITIONS = 10_000  # per topic; Kafka's own limit is 2**31 - 1, far past what a cluster can hold


@click.group(cls=Group)
@click.option("--log-json/--log-console", default=None, help="Log format (default: JSON unless on a terminal).")
@click.option("--log-level", default=None, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Least severe level logged (default: EVENTQ_LOG_LEVEL, else INFO).")
@click.option("--traceback", "traceback", is_flag=True,
              help="On failure, print the full traceback too (also: EVENTQ_DEBUG=1).")
@click.version_option(package_name="eventq")
def main(log_json: bool | None, log_level: str | None, traceback: bool) -> None:
    """eventq: an at-least-once event queue for Python on Apache Kafka."""
    if log_level is None:
        log_level = (os.environ.get("EVENTQ_LOG_LEVEL") or "INFO").strip().upper()
        if log_level not in LOG_LEVELS:
            raise click.ClickException(
                f"EVENTQ_LOG_LEVEL={os.environ['EVENTQ_LOG_LEVEL']!r} is unknown; use {', '.join(LOG_LEVELS)}"
            )
    configure_logging(json_logs=log_json, level=log_level.upper())


DEV_EXTRA_HINT = "pip install 'eventq[dev]'"


def _needs_dev_extra(name: str) -> click.Command:
    # Hidden, and taking any arguments (--help too), so `eventq dev up` gets the one line.
    @click.command(name, hidden=True, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def stand_in() -> None:
        raise click.ClickException(f"eventq {name} needs the development extra: {DEV_EXTRA_HINT}")

    return stand_in


def dev_commands() -> tuple[click.Command, ...]:
    """``eventq dev`` and ``eventq demo`` from :mod:`eventq_dev` if it is importable, else stand-ins
    that say which extra to install (exit 1). An eventq_dev that is installed but fails to
    import is not hidden: its error propagates."""
    try:
        from eventq_dev.cli import COMMANDS
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "eventq_dev":
            raise
        return (_needs_dev_extra("dev"), _needs_dev_extra("demo"))
    return COMMANDS


for _command in dev_commands():
    main.add_command(_command)
main.add_command(dlq)
main.add_command(outbox)


@main.command()
@kafka_options
@option(PRODUCER, "default_topic", "--topic", "-t", "topic")
@click.option("--type", "event_type", required=True, help="Event type, e.g. order.created.v1.")
@click.option("--key", "-k", default=None, help="Partition key (events with one key stay in order).")
@click.option("--data", "-d", default="{}", show_default=True, help="Payload as JSON.")
@click.option("--source", default="eventq-cli", show_default=True, help="CloudEvents source.")
@click.option("--subject", default=None, help="CloudEvents subject.")
@click.option("--correlation-id", default=None, help="Correlation id (default: the event's id).")
@click.option("--causation-id", default=None, help="Id of the event that caused this one.")
@option(PRODUCER, "schemas")
def publish(
    bootstrap_servers: str | None,
    topic: str | None,
    event_type: str,
    key: str | None,
    data: str,
    source: str,
    subject: str | None,
    correlation_id: str | None,
    causation_id: str | None,
    schemas: tuple[str, ...],
) -> None:
    """Publish one event and print where it landed."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}); e.g. --data '{{\"n\": 1}}'", param_hint="--data") from exc
    producer_settings = settings(
        ProducerSettings, kafka=kafka_settings(bootstrap_servers), default_topic=topic, schemas=schemas or None
    )
    if producer_settings.default_topic is None:
        raise click.UsageError("no topic: give --topic TOPIC or set EVENTQ_TOPIC")

    async def go() -> None:
        event = Event(
            type=event_type,
            source=source,
            data=payload,
            key=key,
            subject=subject,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        producer = Producer(producer_settings)
        # Refuse a bad payload before connecting: the answer does not depend on the broker.
        producer.registry.validate(event.type, event.data)
        async with producer:
            published = await producer.publish(event)
        click.echo(
            f"published {published.event_id} to {published.topic} "
            f"partition {published.partition} offset {published.offset}"
        )

    with telemetry_from_env("eventq-cli"):
        run(go())


@main.group()
def topics() -> None:
    """Create topics (brokers should not auto-create them)."""


@topics.command("create")
@kafka_options
@click.argument("names", nargs=-1, required=True)
@click.option("--partitions", "-p", default=6, show_default=True, type=click.IntRange(1, MAX_PARTITIONS))
@click.option("--replication-factor", "-r", default=1, show_default=True, type=click.IntRange(1, 2**15 - 1))
def topics_create(
    bootstrap_servers: str | None, names: tuple[str, ...], partitions: int, replication_factor: int
) -> None:
    """Create the NAMES topics that do not exist yet."""
    created = run(
        create_topics(
            kafka_settings(bootstrap_servers), names, partitions=partitions, replication_factor=replication_factor
        )
    )
    for name in names:
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_AGE_DAYS = 36_500  # a hundred years: older is a typo, and datetime stops at year 1


def parse_age(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """Click callback: a duration such as 30d, 12h or 90m, at most MAX_AGE_DAYS."""
    text = value.strip()
    number, unit = text[:-1], text[-1:]
    if unit not in _AGE_UNITS or not (number.isascii() and number.isdigit()) or int(number) == 0:
        raise click.BadParameter(f"{text!r} is not a duration; use a whole number with d, h, m or s, e.g. 30d")
    if int(number) * _UNIT_SECONDS[unit] > MAX_AGE_DAYS * 86_400:
        raise click.BadParameter(f"{text!r} is longer than {MAX_AGE_DAYS}d (100 years); use a shorter age")
    return timedelta(**{_AGE_UNITS[unit]: int(number)})


@main.group()
def db() -> None:
    """Manage eventq's tables in PostgreSQL."""


@db.command("migrate")
@database_options
def db_migrate(database_url: str | None) -> None:
    """Create or update eventq's tables (safe to run from several places at once)."""
    db_settings = database_settings(database_url)

    async def go() -> list[int]:
        conn = await connect(db_settings)
        try:
            return await migrate_database(conn)
        finally:
            await conn.close()

    applied = run(go())
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "database is up to date")


@db.command("purge")
@database_options
@click.option(
    "--older-than", required=True, callback=parse_age, help="Delete rows recorded longer ago than this, e.g. 30d."
)
@click.option("--group", default=None, help="Only this consumer group's rows.")
def db_purge(database_url: str | None, older_than: timedelta, group: str | None) -> None:
    """Delete old processed_events rows.

    Keep rows longer than Kafka can redeliver an event to the group (topic retention,
    offset resets): a redelivered event without its row runs its handler again.
    """
    db_settings = database_settings(database_url)

    async def go() -> int:
        conn = await connect(db_settings)
        try:
            return await store.purge(conn, older_than, group=group)
        finally:
            await conn.close()

    age = f"{older_than.days}d" if older_than == timedelta(days=older_than.days) else str(older_than)
    click.echo(f"deleted {run(go())} processed_events rows recorded more than {age} ago")


def _import_failed(module_name: str, exc: Exception) -> click.ClickException:
    where = origin(exc)
    return click.ClickException(
        f"importing {module_name!r} failed: {one_line(exc)}" + (f" ({where})" if where else "") + f"; {TRACEBACK_HINT}"
    )


def load_app(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    """Click callback: import ``module:attribute`` and return the App it names."""
    from eventq.consumers import App

    module_name, sep, attribute = value.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter(f"{value!r} is not MODULE:ATTRIBUTE, e.g. myservice.handlers:app")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like python -m: modules next to the working directory import
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise click.BadParameter(
                f"module {module_name!r} not found; run from the directory that contains it or install it"
            ) from exc
        raise _import_failed(module_name, exc) from exc
    except EventqError as exc:
        raise click.BadParameter(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised at import: say where, not how deep
        raise _import_failed(module_name, exc) from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise click.BadParameter(f"{value!r} is {found}, not an eventq App; e.g. app = App('billing')")
    return app


@main.command()
@click.argument("app", metavar="MODULE:APP", callback=load_app)
@kafka_options
@database_options
@option(CONSUMER, "group_id", "--group", "group")
@option(CONSUMER, "topics", "--topic", "topics")
@click.option("--until-idle", is_flag=True, help="Exit 0 once every assigned partition is processed to its end.")
@option(CONSUMER, "ordering")
@option(CONSUMER, "max_batch_size")
@option(CONSUMER, "max_attempts")
@option(CONSUMER, "health_port")
@click.option("--migrate", is_flag=True, help="Apply database migrations before starting.")
@option(CONSUMER, "workers")
def consume(
    app: Any,
    bootstrap_servers: str | None,
    database_url: str | None,
    group: str | None,
    topics: tuple[str, ...],
    until_idle: bool,
    ordering: str | None,
    max_batch_size: int | None,
    max_attempts: int | None,
    health_port: int | None,
    migrate: bool,
    workers: int | None,
) -> None:
    """Run a consumer daemon for MODULE:APP until SIGTERM/SIGINT (or --until-idle).

    Other settings come from EVENTQ_* variables (see the README); traces and metrics
    from OTEL_* ones (and EVENTQ_TRACE_FILE). On SIGTERM or SIGINT it stops fetching,
    lets in-flight work finish within the grace period, commits, leaves the group and
    exits 0. With --workers N, N such daemons run as child processes, restarted if they
    die; SIGTERM/SIGINT stops them all, and --health-port reports on all of them.
    """
    from eventq.consumers import Consumer, ConsumerSettings
    from eventq.consumers.supervisor import serve_supervisor

    consumer_settings = settings(
        ConsumerSettings, kafka=kafka_settings(bootstrap_servers), database=database_settings(database_url),
        group_id=group, topics=topics or None, ordering=ordering, max_batch_size=max_batch_size,
        max_attempts=max_attempts, health_port=health_port, workers=workers,
    )
    if consumer_settings.workers > 1:
        try:
            Consumer(app, consumer_settings)  # its configuration errors are one line here, not one per worker
        except EventqError as exc:
            raise click.ClickException(str(exc)) from exc
        _supervise(consumer_settings)
        return

    async def go(daemon: Consumer) -> None:
        if migrate:
            conn = await connect(consumer_settings.database)
            try:
                await migrate_database(conn)
            finally:
                await conn.close()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        tune_gc_for_daemon()
        supervised = asyncio.create_task(serve_supervisor(daemon))  # a no-op unless a worker of --workers
        try:
            await daemon.run(until_idle=until_idle)
        finally:
            supervised.cancel()

    with telemetry_from_env(consumer_settings.group_id or app.name,
                            prometheus=consumer_settings.health_port is not None):
        try:
            daemon = Consumer(app, consumer_settings)
        except EventqError as exc:
            raise click.ClickException(str(exc)) from exc
        run(go(daemon))


def _supervise(consumer_settings: ConsumerSettings) -> None:
    """``eventq consume --workers N``: this process supervises N workers running the same command."""
    from eventq.consumers.supervisor import Supervisor, worker_command

    json_logs = click.get_current_context().find_root().params.get("log_json")
    supervisor = Supervisor(
        worker_command(sys.argv[1:], json_logs=not sys.stderr.isatty() if json_logs is None else json_logs),
        consumer_settings.workers, shutdown_grace_s=consumer_settings.shutdown_grace_s,
        health_host=consumer_settings.health_host, health_port=consumer_settings.health_port,
    )

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        return await supervisor.run()

    outcome = run(go())
    if outcome.message:
        click.echo(f"Error: {outcome.message}", err=True)
    if outcome.code:
        raise click.exceptions.Exit(outcome.code)


@main.command("trace")
@click.argument("event_id")
@click.option("--file", "path", envvar="EVENTQ_TRACE_FILE", required=True, type=click.Path(dir_okay=False),
              help="Span file written with EVENTQ_TRACE_FILE (eventq demo writes .eventq/demo-spans.jsonl).")
def trace_command(event_id: str, path: str) -> None:
    """Print the journey of EVENT_ID from a local span file, as trees of spans.

    Shows every trace the event took part in (publish, handling, retries, dead letter,
    replay, follow-up events) and the spans linked to them (batches, the replay run).
    Exit 1 if no span names the event.
    """
    from eventq.telemetry.view import journey, load_spans, render

    try:
        spans = load_spans(path)
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
    found = journey(spans.spans, event_id)
    if spans.skipped:
        click.echo(f"({spans.skipped} lines of {path} are not spans; skipped)", err=True)
    if found.is_empty:
        raise click.ClickException(
            f"no span in {path} has messaging.message.id {event_id}; was tracing on (EVENTQ_TRACE_FILE or "
            "OTEL_TRACES_EXPORTER) when it was published or handled?"
        )
    click.echo(render(found, color=sys.stdout.isatty()))


if __name__ == "__main__":
    main()
