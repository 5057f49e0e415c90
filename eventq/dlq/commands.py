"""``eventq dlq``: list, show, replay and archive dead letters.

Exit codes: 0 done, 1 some letters failed to replay (or a service failed), 2 wrong usage.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from eventq.clikit import kafka_options, kafka_settings, run, telemetry_from_env
from eventq.dlq.inspect import archive, dead_letter_topics, find, summarize
from eventq.dlq.letters import Letter, clip
from eventq.dlq.replay import DEFAULT_MAX_REPLAYS, MAX_RATE, MIN_RATE, Filters, ReplayReport, replay
from eventq.kafkarecords import printable

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
MAX_AGE_DAYS = 36_500  # a hundred years: longer is a typo (and beyond what datetime can subtract)


def parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback: an ISO 8601 time (UTC if no offset) or an age such as 2h, 30m, 7d (that long ago)."""
    if value is None:
        return None
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        number, unit = int(match.group(1)), match.group(2)
        if number * _UNIT_SECONDS[unit] > MAX_AGE_DAYS * 86_400:
            raise click.BadParameter(f"{text!r} is more than {MAX_AGE_DAYS}d (100 years) ago; use a shorter age")
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: number})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-11-28T10:00:00Z) nor an age (30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_rate(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: letters per second, as N or N/s, from MIN_RATE to MAX_RATE."""
    if value is None:
        return None
    text = value.strip().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a rate; use letters per second, e.g. 50/s") from None
    if not (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise click.BadParameter(
            f"{value!r} is out of range: the rate must be positive, from {MIN_RATE:g}/s to {MAX_RATE:.0f}/s, e.g. 50/s"
        )
    return rate


def parse_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Click callback: FIRST-LAST dead-letter offsets, inclusive."""
    if value is None:
        return None
    match = re.match(r"^(\d+)-(\d+)$", value.strip())
    if not match or int(match.group(1)) > int(match.group(2)):
        raise click.BadParameter(f"{value!r} is not FIRST-LAST with FIRST <= LAST, e.g. 100-250")
    return int(match.group(1)), int(match.group(2))


@click.group()
def dlq() -> None:
    """Inspect, replay and archive dead letters (eventq's, Spring's and Karafka's)."""


@dlq.command("list")
@click.argument("topic", required=False)
@kafka_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(topic: str | None, bootstrap_servers: str | None, as_json: bool) -> None:
    """Dead-letter topics with counts, age, and failures grouped by error type and handler."""
    kafka = kafka_settings(bootstrap_servers)

    async def go() -> Any:
        topics = [topic] if topic else await dead_letter_topics(kafka)
        return await summarize(kafka, topics)

    summaries = run(go())
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
        return
    if not summaries:
        click.echo("no dead-letter topics (names ending in .dlt, -dlt or .DLT); name one: eventq dlq list TOPIC")
        return
    for s in summaries:
        span = f"{s.oldest:%Y-%m-%d %H:%M} … {s.newest:%Y-%m-%d %H:%M} UTC" if s.oldest and s.newest else "empty"
        click.echo(f"{s.topic}: {s.count} dead letters ({span})")
        if s.by_failure:
            click.echo(f"  {'count':>7}  {'error type':<40} handler")
            for (error_type, handler), n in s.by_failure.most_common():
                click.echo(f"  {n:>7}  {clip(error_type):<40} {clip(handler)}")
        if s.sources:
            click.echo("  from: " + ", ".join(f"{clip(t)} ({n})" for t, n in s.sources.most_common()))
        if s.problem_count:
            more = f" (the first {len(s.problems)} listed)" if s.problem_count > len(s.problems) else ""
            click.echo(f"  {s.problem_count} letters eventq cannot fully read{more}:")
            for position, what in s.problems:
                click.echo(f"    {position}: {what}")


@dlq.command("show")
@click.argument("topic")
@kafka_options
@click.option("--offset", type=click.IntRange(min=0), default=None, help="Dead-letter offset.")
@click.option("--partition", type=click.IntRange(min=0), default=None, help="With --offset: which partition.")
@click.option("--event-id", default=None, help="Find the letter(s) of this event id instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(
    topic: str, bootstrap_servers: str | None, offset: int | None, partition: int | None, event_id: str | None,
    as_json: bool,
) -> None:
    """One dead letter whole: envelope, payload, origin, error, stack trace, attempts, replays."""
    if (offset is None) == (event_id is None):
        raise click.UsageError("give --offset N (and --partition P if the topic has several) or --event-id ID")
    letters = run(find(kafka_settings(bootstrap_servers), topic, offset=offset, partition=partition, event_id=event_id))
    if not letters:
        what = f"at offset {offset}" if offset is not None else f"for event {event_id}"
        raise click.ClickException(f"no dead letter {what} in {topic}")
    if offset is not None and partition is None and len(letters) > 1:
        parts = ", ".join(str(letter.partition) for letter in letters)
        raise click.UsageError(f"offset {offset} exists in partitions {parts}; add --partition")
    if as_json:
        click.echo(json.dumps([letter.as_dict() for letter in letters], indent=2, default=str))
        return
    for letter in letters:
        _print_letter(letter)


def _line(label: str, *parts: tuple[str, object]) -> None:
    """One line of `dlq show`: each (format, value) part whose value the letter has; no line if none."""
    present = [text.format(value) for text, value in parts if value is not None]
    if present:
        click.echo(f"  {label:<10} " + " ".join(present))


def _print_letter(letter: Letter) -> None:
    """A letter for reading: only what its dialect carries (absent fields are left out)."""
    view = letter.as_dict()
    click.echo(f"dead letter {letter.position}, dead-lettered {letter.time_text} ({letter.dialect} headers)")
    if letter.unreadable is not None:
        click.echo(f"  unreadable {letter.unreadable}")
    _line("event", ("id={}", letter.event_id), ("type={}", letter.event_type), ("key={}", letter.key_text),
          ("correlation={}", letter.correlation_id))
    _line("origin", ("{}", letter.source_topic), ("partition {}", letter.source_partition),
          ("offset {}", letter.source_offset), ("consumer group {}", letter.group))
    _line("failure", ("{}", letter.reason), ("after {} attempt(s)", letter.attempts), ("in {}", letter.handler))
    _line("", ("first {}", letter.first_failure), ("last {}", letter.last_failure))
    error = ": ".join(t for t in (letter.error_type, letter.error_message) if t is not None) or None
    _line("error", ("{}", error), ("(cause {})", letter.cause_type))
    history = f" (from {', '.join(letter.replays)})" if letter.replays else ""
    click.echo(f"  replays    {letter.replay_count}{history}")
    if letter.value is not None:
        click.echo("  payload    " + json.dumps(view["payload"], default=str))
    if letter.headers:
        click.echo("  headers    " + ", ".join(printable(n) for n, _ in letter.headers))
    for problem in letter.problems():
        if not problem.startswith("unreadable"):
            click.echo(f"  note       {problem}")
    if letter.stacktrace:
        click.echo("  stack trace:")
        for line in letter.stacktrace.rstrip().splitlines():
            click.echo("    " + line)


@dlq.command("replay")
@click.argument("topic")
@kafka_options
@click.option("--since", callback=parse_time, help="Dead-lettered at or after (ISO time, or an age: 2h).")
@click.option("--until", callback=parse_time, help="Dead-lettered before (ISO time, or an age).")
@click.option("--error-type", default=None, help="Error class (module-qualified, or the class name).")
@click.option("--event-type", default=None, help="Event type, e.g. demo.order.created.v1.")
@click.option("--key", default=None, help="Partition key.")
@click.option("--correlation-id", default=None, help="Correlation id.")
@click.option("--handler", default=None, help="Handler (module.qualname, or the function name).")
@click.option("--offset-range", callback=parse_range, help="FIRST-LAST dead-letter offsets, inclusive.")
@click.option("--to", "to", default=None, help="Republish to this topic instead of each letter's source topic.")
@click.option("--run", "run_name", default=None,
              help="Name of this replay run; rerun with the same name to resume (default: a new name).")
@click.option("--max-replays", type=click.IntRange(min=1), default=DEFAULT_MAX_REPLAYS, show_default=True,
              help="Refuse letters already replayed this many times (loop guard).")
@click.option("--rate", callback=parse_rate, help="At most this many letters per second, e.g. 50/s.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many letters.")
@click.option("--dry-run", is_flag=True, help="Only show what would be replayed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
def replay_command(
    topic: str, bootstrap_servers: str | None, since: datetime | None, until: datetime | None, error_type: str | None,
    event_type: str | None, key: str | None, correlation_id: str | None, handler: str | None,
    offset_range: tuple[int, int] | None, to: str | None, run_name: str | None, max_replays: int,
    rate: float | None, limit: int | None, dry_run: bool, yes: bool,
) -> None:
    """Republish dead letters to their source topic (or --to), filtered, resumable and loop-guarded.

    Without --yes it first shows what would be replayed and asks. A run interrupted in any
    way (Ctrl-C, kill -9, a broker outage) continues where it stopped when rerun with the
    same --run and filters, republishing nothing twice. Exit 1 if some letters failed.
    """
    if since and until and since >= until:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    kafka = kafka_settings(bootstrap_servers)
    filters = Filters(since=since, until=until, error_type=error_type, event_type=event_type, key=key,
                      correlation_id=correlation_id, handler=handler, offsets=offset_range)
    options: dict[str, Any] = {"to": to, "max_replays": max_replays, "limit": limit}
    total: int | None = None
    if dry_run or not yes:
        if not dry_run and not sys.stdin.isatty():
            raise click.UsageError("not a terminal, so no one can confirm: add --yes (or --dry-run to preview)")
        preview: ReplayReport = run(replay(kafka, topic, filters, run=run_name, dry_run=True, **options))
        _print_report(preview)
        if dry_run or not preview.replayed:
            sys.exit(1 if preview.failed else 0)
        click.confirm(f"Replay {len(preview.replayed)} dead letters?", abort=True)
        total = (len(preview.replayed) + preview.filtered + preview.superseded + len(preview.refused)
                 + len(preview.failed))
    with telemetry_from_env("eventq-dlq"):
        if total and sys.stdout.isatty():
            with click.progressbar(length=total, label="replaying") as bar:
                report = run(replay(kafka, topic, filters, run=run_name, rate=rate,
                                     progress=lambda _letter: bar.update(1), **options))
        else:
            report = run(replay(kafka, topic, filters, run=run_name, rate=rate, **options))
    _print_report(report)
    if report.stopped_at_limit:
        click.echo(f"stopped at --limit {limit}; continue with --run {report.run}")
    sys.exit(1 if report.failed else 0)


def _print_report(report: ReplayReport) -> None:
    for position, why in report.refused:
        click.echo(f"refused {position}: {why}")
    for position, why in report.failed:
        click.echo(f"failed  {position}: {why}")
    for position, count in report.renamed:
        click.echo(f"warning {position}: {count} header name(s) not UTF-8, "
                   f"{'would be ' if report.dry_run else ''}replayed with U+FFFD in place of the bytes")
    if report.resumed and not report.dry_run:
        click.echo(f"resumed run {report.run} where it stopped (with the time window it started with)")
    click.echo(f"{report.topic}: {report.summary()}" + ("" if report.dry_run else f" [run {report.run}]"))


@dlq.command("archive")
@click.argument("topic")
@kafka_options
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON-lines file to append to.")
@click.option("--before", callback=parse_time, help="Only letters dead-lettered before this (ISO time or age).")
@click.option("--delete", is_flag=True, help="Then delete the archived letters from the topic.")
def archive_command(
    topic: str, bootstrap_servers: str | None, path: Path, before: datetime | None, delete: bool
) -> None:
    """Export each partition's oldest dead letters as JSON lines (and optionally delete them).

    Kafka deletes only a partition's oldest records, so with --before the archive of a
    partition stops at its first letter that is not old enough (docs/adr/0008).
    """
    counts = run(archive(kafka_settings(bootstrap_servers), topic, path, before=before, delete=delete))
    total = sum(counts.values())
    action = "archived and deleted" if delete else "archived"
    click.echo(f"{action} {total} dead letters from {topic} to {path}")
