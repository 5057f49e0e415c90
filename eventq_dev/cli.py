"""The ``eventq`` commands of the development tools: ``eventq dev ...`` and ``eventq demo``.

:mod:`eventq.cli` adds :data:`COMMANDS` to the ``eventq`` group when this package is
importable, and otherwise answers them with one line naming the development extra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from eventq.clikit import database_options, database_settings, kafka_options, kafka_settings, run, telemetry_from_env
from eventq.errors import EventqError
from eventq_dev.devstack.commands import dev

__all__ = ["COMMANDS", "demo", "dev"]


@click.command()
@kafka_options
@database_options
@click.option("--topic", default="demo.orders", show_default=True)
@click.option("--events", "count", default=1000, show_default=True, type=click.IntRange(min=20))
@click.option("--trace-file", default=".eventq/demo-spans.jsonl", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the demo's spans (the file is replaced each run).")
def demo(bootstrap_servers: str | None, database_url: str | None, topic: str, count: int, trace_file: str) -> None:
    """Publish demo orders, consume them with a daemon, dead-letter the one that always fails, replay it.

    Ends by printing the failed order's trace from the span file (also: eventq trace ID --file FILE).
    """
    from opentelemetry import trace as otel_trace

    from eventq.telemetry.view import journey, load_spans, render
    from eventq_dev.demo import run_demo

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
        run(run_demo(kafka_settings(bootstrap_servers), database_settings(database_url), topic=topic, count=count,
                     echo=click.echo, show_trace=show_trace))


COMMANDS: tuple[click.Command, ...] = (dev, demo)
"""What :mod:`eventq.cli` adds to the ``eventq`` group."""
