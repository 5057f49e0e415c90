"""What every ``eventq`` command group shares: running a coroutine, telemetry, the Kafka option.

Used by :mod:`eventq.cli` and the command groups it adds (``eventq dlq``). Together they
are the only code that calls ``asyncio.run``, sets up OpenTelemetry and turns eventq
errors into exit codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from eventq.config import KafkaSettings
from eventq.errors import EventqError
from eventq.telemetry.setup import TelemetrySettings, configure

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; an eventq error becomes ``Error: ...`` and exit code 1."""
    try:
        return asyncio.run(coro)
    except EventqError as exc:
        message = str(exc)
        for note in getattr(exc, "__notes__", []):
            message += f"\n  {note}"
        raise click.ClickException(message) from exc


@contextmanager
def telemetry_from_env(service_name: str, *, prometheus: bool = False, trace_file: str | None = None) -> Iterator[None]:
    """OpenTelemetry from the ``OTEL_*`` variables for the block (see :mod:`eventq.telemetry.setup`); flushed after."""
    try:
        shutdown = configure(
            TelemetrySettings.from_env(service_name=service_name, prometheus=prometheus, trace_file=trace_file)
        )
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield
    finally:
        shutdown()


def kafka_options(func: Any) -> Any:
    """Options shared by commands that talk to Kafka (same names as the env vars)."""
    return click.option(
        "--bootstrap-servers",
        envvar="EVENTQ_BOOTSTRAP_SERVERS",
        default="127.0.0.1:9092",
        show_default=True,
        help="Kafka brokers, host:port[,host:port].",
    )(func)


def kafka_settings(bootstrap_servers: str) -> KafkaSettings:
    """Kafka settings from EVENTQ_* variables, with the command line's brokers."""
    try:
        return dataclasses.replace(KafkaSettings.from_env(), bootstrap_servers=bootstrap_servers)
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc
