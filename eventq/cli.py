"""The ``eventq`` command line.

With :mod:`eventq.clikit` and the command groups it adds, the only place that
configures logging (structlog) and the garbage collector, installs signal handlers,
runs ``asyncio.run`` and turns errors into exit codes: 0 done, 1 failed (an eventq error, printed as one line
saying what to do), 2 wrong usage (click's own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import orjson

from eventq.clikit import kafka_options, kafka_settings, run, telemetry_from_env
from eventq.consumers import store
from eventq.database import DEFAULT_DATABASE_URL, DatabaseSettings, connect
from eventq.devstack.commands import dev
from eventq.dlq.commands import dlq
from eventq.errors import EventqError
from eventq.kafka import create_topics
from eventq.producers import Producer, ProducerSettings
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


@click.group()
@click.option("--log-json/--log-console", default=None, help="Log format (default: JSON unless on a terminal).")
@click.option("--log-level", default="INFO", envvar="EVENTQ_LOG_LEVEL", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="eventq")
def main(log_json: bool | None, log_level: str) -> None:
    """eventq: an at-least-once event queue for Python on Apache Kafka."""
    configure_logging(json_logs=log_json, level=log_level.upper())


main.add_command(dev)
main.add_command(dlq)


@main.command()
@kafka_options
@click.option("--topic", "-t", required=True, envvar="EVENTQ_TOPIC", help="Topic to publish to.")
@click.option("--type", "event_type", required=True, help="Event type, e.g. order.created.v1.")
@click.option("--key", "-k", default=None, help="Partition key (events with one key stay in order).")
@click.option("--data", "-d", default="{}", show_default=True, help="Payload as JSON.")
@click.option("--source", default="eventq-cli", show_default=True, help="CloudEvents source.")
@click.option("--subject", default=None, help="CloudEvents subject.")
@click.option("--correlation-id", default=None, help="Correlation id (default: the event's id).")
@click.option("--causation-id", default=None, help="Id of the event that caused this one.")
@click.option("--schemas", "schemas", multiple=True, envvar="EVENTQ_SCHEMAS",
              help="Directory or package of <type>.json schemas (repeatable).")
def publish(
    bootstrap_servers: str,
    topic: str,
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
    settings = ProducerSettings(kafka=kafka_settings(bootstrap_servers), schemas=schemas)

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
        producer = Producer(settings)
        # Refuse a bad payload before connecting: the answer does not depend on the broker.
        producer.registry.validate(event.type, event.data)
        async with producer:
            published = await producer.publish(event, topic=topic)
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
@click.option("--partitions", "-p", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--replication-factor", "-r", default=1, show_default=True, type=click.IntRange(min=1))
def topics_create(bootstrap_servers: str, names: tuple[str, ...], partitions: int, replication_factor: int) -> None:
    """Create the NAMES topics that do not exist yet."""
    created = run(
        create_topics(
            kafka_settings(bootstrap_servers), names, partitions=partitions, replication_factor=replication_factor
        )
    )
    for name in names:
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


def _database(url: str) -> DatabaseSettings:
    try:
        return dataclasses.replace(DatabaseSettings.from_env(), url=url)
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc


_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """Click callback: a duration such as 30d, 12h or 90m."""
    text = value.strip()
    number, unit = text[:-1], text[-1:]
    if unit not in _AGE_UNITS or not number.isdigit() or int(number) == 0:
        raise click.BadParameter(f"{text!r} is not a duration; use a whole number with d, h, m or s, e.g. 30d")
    return timedelta(**{_AGE_UNITS[unit]: int(number)})


database_url_option = click.option(
    "--database-url", envvar="EVENTQ_DATABASE_URL", default=DEFAULT_DATABASE_URL, show_default="the dev stack's",
    help="PostgreSQL URL.",
)


@main.group()
def db() -> None:
    """Manage eventq's tables in PostgreSQL."""


@db.command("migrate")
@database_url_option
def db_migrate(database_url: str) -> None:
    """Create or update eventq's tables (safe to run from several places at once)."""

    async def go() -> list[int]:
        conn = await connect(_database(database_url))
        try:
            return await store.migrate(conn)
        finally:
            await conn.close()

    applied = run(go())
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "database is up to date")


@db.command("purge")
@database_url_option
@click.option(
    "--older-than", required=True, callback=parse_age, help="Delete rows recorded longer ago than this, e.g. 30d."
)
@click.option("--group", default=None, help="Only this consumer group's rows.")
def db_purge(database_url: str, older_than: timedelta, group: str | None) -> None:
    """Delete old processed_events rows.

    Keep rows longer than Kafka can redeliver an event to the group (topic retention,
    offset resets): a redelivered event without its row runs its handler again.
    """

    async def go() -> int:
        conn = await connect(_database(database_url))
        try:
            return await store.purge(conn, older_than, group=group)
        finally:
            await conn.close()

    age = f"{older_than.days}d" if older_than == timedelta(days=older_than.days) else str(older_than)
    click.echo(f"deleted {run(go())} processed_events rows recorded more than {age} ago")


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
        if exc.name and module_name.startswith(exc.name):
            raise click.BadParameter(
                f"module {module_name!r} not found; run from the directory that contains it or install it"
            ) from exc
        raise
    except EventqError as exc:
        raise click.BadParameter(f"importing {module_name!r} failed: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise click.BadParameter(f"{value!r} is {found}, not an eventq App; e.g. app = App('billing')")
    return app


@main.command()
@click.argument("app", metavar="MODULE:APP", callback=load_app)
@kafka_options
@database_url_option
@click.option("--group", envvar="EVENTQ_GROUP", default=None, help="Consumer group (default: the App's name).")
@click.option("--topic", "topics", multiple=True, help="Topic to consume (repeatable; default: the App's topics).")
@click.option("--until-idle", is_flag=True, help="Exit 0 once every assigned partition is processed to its end.")
@click.option("--ordering", type=click.Choice(["partition", "key"]), envvar="EVENTQ_ORDERING", default=None,
              help="partition: one event at a time per partition; key: keys of a partition concurrently.")
@click.option("--max-batch-size", type=click.IntRange(min=1), envvar="EVENTQ_MAX_BATCH_SIZE", default=None)
@click.option("--max-attempts", type=click.IntRange(min=1), envvar="EVENTQ_MAX_ATTEMPTS", default=None)
@click.option("--health-port", type=click.IntRange(0, 65535), envvar="EVENTQ_HEALTH_PORT", default=None,
              help="Serve /livez, /readyz and /metrics (Prometheus) on this port (0: any free port).")
@click.option("--migrate", is_flag=True, help="Apply database migrations before starting.")
def consume(
    app: Any,
    bootstrap_servers: str,
    database_url: str,
    group: str | None,
    topics: tuple[str, ...],
    until_idle: bool,
    ordering: str | None,
    max_batch_size: int | None,
    max_attempts: int | None,
    health_port: int | None,
    migrate: bool,
) -> None:
    """Run a consumer daemon for MODULE:APP until SIGTERM/SIGINT (or --until-idle).

    Other settings come from EVENTQ_* variables (see the README); traces and metrics
    from OTEL_* ones (and EVENTQ_TRACE_FILE). On SIGTERM or SIGINT it stops fetching,
    lets in-flight work finish within the grace period, commits, leaves the group and
    exits 0.
    """
    from eventq.consumers import Consumer, ConsumerSettings

    try:
        base = ConsumerSettings.from_env()
        overrides: dict[str, Any] = {
            "kafka": dataclasses.replace(base.kafka, bootstrap_servers=bootstrap_servers),
            "database": dataclasses.replace(base.database, url=database_url),
        }
        for name, value in (("group_id", group), ("ordering", ordering), ("max_batch_size", max_batch_size),
                            ("max_attempts", max_attempts), ("health_port", health_port)):
            if value is not None:
                overrides[name] = value
        if topics:
            overrides["topics"] = topics
        settings = dataclasses.replace(base, **overrides)
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc

    async def go(daemon: Consumer) -> None:
        if migrate:
            conn = await connect(settings.database)
            try:
                await store.migrate(conn)
            finally:
                await conn.close()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        tune_gc_for_daemon()
        await daemon.run(until_idle=until_idle)

    with telemetry_from_env(settings.group_id or app.name, prometheus=settings.health_port is not None):
        try:
            daemon = Consumer(app, settings)
        except EventqError as exc:
            raise click.ClickException(str(exc)) from exc
        run(go(daemon))


@main.command()
@kafka_options
@database_url_option
@click.option("--topic", default="demo.orders", show_default=True)
@click.option("--events", "count", default=1000, show_default=True, type=click.IntRange(min=20))
@click.option("--trace-file", default=".eventq/demo-spans.jsonl", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the demo's spans (the file is replaced each run).")
def demo(bootstrap_servers: str, database_url: str, topic: str, count: int, trace_file: str) -> None:
    """Publish demo orders, consume them with a daemon, dead-letter the one that always fails, replay it.

    Ends by printing the failed order's trace from the span file (also: eventq trace ID --file FILE).
    """
    from opentelemetry import trace as otel_trace

    from eventq.demo import run_demo
    from eventq.telemetry.view import journey, load_spans, render

    def show_trace(event_id: str) -> str | None:
        provider: Any = otel_trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush()
        try:
            found = journey(load_spans(trace_file).spans, event_id)
        except EventqError:  # no span file: tracing was turned off (OTEL_SDK_DISABLED)
            return None
        if found.is_empty:
            return None
        return render(found, color=sys.stdout.isatty()) + f"\n(again: eventq trace {event_id} --file {trace_file})"

    Path(trace_file).parent.mkdir(parents=True, exist_ok=True)
    Path(trace_file).unlink(missing_ok=True)
    with telemetry_from_env("eventq-demo", trace_file=trace_file):
        run(run_demo(kafka_settings(bootstrap_servers), _database(database_url), topic=topic, count=count,
                     echo=click.echo, show_trace=show_trace))


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
