"""``eventq outbox``: run the relay, see what waits, put parked events back.

Exit codes: 0 done, 1 a service failed (one line saying what to do), 2 wrong usage,
130 interrupted.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click
import orjson

from eventq.clikit import (
    database_options,
    database_settings,
    kafka_options,
    kafka_settings,
    option,
    run,
    settings,
    telemetry_from_env,
)
from eventq.database import DatabaseSettings, connect
from eventq.errors import RelayError
from eventq.kafka import TOPIC_NAME
from eventq.outbox.settings import RELAY, RelaySettings
from eventq.outbox.table import OutboxStatus, status

T = TypeVar("T")


async def _on_outbox(db: DatabaseSettings, query: Callable[[Any], Awaitable[T]]) -> T:
    """``query(conn)`` on a new connection; a database without the outbox table is one line saying what to do."""
    conn = await connect(db)
    try:
        return await query(conn)
    except asyncpg.UndefinedTableError as exc:
        raise RelayError(f"the database at {db.safe_url} has no eventq_outbox table; run 'eventq db migrate'") from exc
    finally:
        await conn.close()


@click.group()
def outbox() -> None:
    """Relay the transactional outbox to Kafka and inspect it."""


@outbox.command("relay")
@kafka_options
@database_options
@option(RELAY, "batch_size")
@option(RELAY, "poll_interval_s")
@option(RELAY, "health_port")
@click.option("--until-empty", is_flag=True,
              help="Exit 0 once no row of its shares is pending (rows of a failing topic keep it retrying).")
def relay_command(
    bootstrap_servers: str | None,
    database_url: str | None,
    batch_size: int | None,
    poll_interval_s: float | None,
    health_port: int | None,
    until_empty: bool,
) -> None:
    """Publish committed outbox events until SIGTERM/SIGINT (or --until-empty).

    Several relays may run against one database: each publishes its own shares of the
    outbox, and takes over a stopped relay's shares within seconds. Other settings come
    from EVENTQ_OUTBOX_* and the producer's EVENTQ_* variables (README, Configuration).
    """
    from eventq.cli import tune_gc_for_daemon
    from eventq.outbox.relay import Relay

    relay_settings = settings(
        RelaySettings, kafka=kafka_settings(bootstrap_servers), database=database_settings(database_url),
        batch_size=batch_size, poll_interval_s=poll_interval_s, health_port=health_port,
    )

    async def go() -> None:
        relay = Relay(relay_settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        tune_gc_for_daemon()
        await relay.run(until_empty=until_empty)

    with telemetry_from_env("eventq-outbox-relay", prometheus=relay_settings.health_port is not None):
        run(go())


@outbox.command("status")
@database_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def status_command(database_url: str | None, as_json: bool) -> None:
    """Show pending and parked events per topic, the oldest pending age, the last error, and the relays."""
    db_settings = database_settings(database_url)

    found: OutboxStatus = run(_on_outbox(db_settings, status))
    if as_json:
        click.echo(orjson.dumps(found.as_dict()).decode())
        return
    click.echo(_render(found))


def _render(found: OutboxStatus) -> str:
    lines = [f"{'topic':<40} {'pending':>8} {'parked':>7} {'oldest':>9}  last error"]
    for t in found.topics:
        age = "-" if t.oldest_age_s is None else f"{t.oldest_age_s:.1f}s"
        error = (t.last_error or "").replace("\n", " ")
        lines.append(f"{_clip(t.topic, 40):<40} {t.pending:>8} {t.parked:>7} {age:>9}  {_clip(error, 100)}")
    if not found.topics:
        lines.append("(the outbox is empty)")
    relays = ", ".join(f"{r.name or r.pid} shares {_ranges(r.shares)}" for r in found.relays) or "none running"
    lines.append(f"relays: {relays}")
    if found.unowned_shares and found.relays:
        lines.append(f"shares no relay holds yet: {_ranges(found.unowned_shares)}")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _ranges(shares: tuple[int, ...]) -> str:
    if not shares:
        return "none"
    out: list[str] = []
    start = prev = shares[0]
    for s in (*shares[1:], None):
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(out)


@outbox.command("unpark")
@database_options
@click.option("--topic", default=None, help="Only this topic's parked events.")
def unpark_command(database_url: str | None, topic: str | None) -> None:
    """Put parked events back in line (after fixing why they could not be sent, e.g. the topic's size limit)."""
    if topic is not None and not TOPIC_NAME.fullmatch(topic):
        raise click.BadParameter(
            "not a Kafka topic name; use 1 to 249 letters, digits, '.', '_' or '-'", param_hint="--topic"
        )
    db_settings = database_settings(database_url)

    async def go(conn: Any) -> int:
        result = await conn.execute(
            "UPDATE eventq_outbox SET parked_at = NULL, attempts = 0 WHERE parked_at IS NOT NULL "
            "AND ($1::text IS NULL OR topic = $1)", topic,
        )
        return int(result.split()[-1])

    count = run(_on_outbox(db_settings, go))
    click.echo(f"unparked {count} events" + (f" of topic {topic}" if topic else ""))
