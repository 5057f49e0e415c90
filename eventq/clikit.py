"""What every ``eventq`` command group shares: running a coroutine, telemetry, settings, failures.

Used by :mod:`eventq.cli` and the command groups it adds (``eventq dlq``). Together they
are the only code that calls ``asyncio.run``, sets up OpenTelemetry and turns errors
into exit codes. Every failure ends as one line on stderr, redacted
(:func:`eventq.redact.redact`): ``Error: <what went wrong and what to do>``, exit 1;
click's usage errors exit 2; Ctrl-C exits 130 quietly. ``--traceback`` (or
``EVENTQ_DEBUG=1``) prints the full traceback, redacted too, before that line.

Settings come from one path: :func:`settings` calls the class's ``from_env`` with the
options the user gave as overrides, so a command and the daemon read every variable
with the same checks (docs/adr/0013-settings-and-secrets.md); an option that overrides a
setting is built from that setting's record by :func:`option`.
"""

from __future__ import annotations

import asyncio
import os
import sysconfig
import traceback
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click

from eventq.config import KAFKA, KafkaSettings
from eventq.database import DATABASE, DatabaseSettings
from eventq.errors import EventqError
from eventq.redact import redact
from eventq.settings_table import Setting, Table
from eventq.telemetry.setup import TelemetrySettings, configure

T = TypeVar("T")
S = TypeVar("S", covariant=True)
F = TypeVar("F", bound=Callable[..., Any])

TRACEBACK_HINT = "run with --traceback for the full traceback"
_TRUE = ("1", "true", "yes", "on")


class _FromEnv(Protocol[S]):
    def from_env(self, env: Any = None, **overrides: Any) -> S: ...


def settings(cls: _FromEnv[S], **given: Any) -> S:
    """``cls.from_env(**given)``, leaving out options the user did not give (None); ConfigError → ``Error:``."""
    try:
        return cls.from_env(**{name: value for name, value in given.items() if value is not None})
    except EventqError as exc:
        raise click.ClickException(str(exc)) from exc


def kafka_settings(bootstrap_servers: str | None) -> KafkaSettings:
    """Kafka settings from EVENTQ_* variables, with the command line's brokers if given."""
    return settings(KafkaSettings, bootstrap_servers=bootstrap_servers)


def database_settings(url: str | None) -> DatabaseSettings:
    """Database settings from EVENTQ_* variables, with the command line's URL if given."""
    return settings(DatabaseSettings, url=url)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; an eventq error becomes ``Error: ...`` and exit code 1."""
    try:
        return asyncio.run(coro)
    except EventqError as exc:
        raise click.ClickException(_describe(exc)) from exc


def _describe(exc: EventqError) -> str:
    message = str(exc)
    for note in getattr(exc, "__notes__", []):
        message += f"\n  {note}"
    return message


def debugging(ctx: click.Context | None = None) -> bool:
    """True if the user asked for full tracebacks (``eventq --traceback`` or ``EVENTQ_DEBUG=1``)."""
    ctx = ctx or click.get_current_context(silent=True)
    flag = bool(ctx is not None and ctx.find_root().params.get("traceback"))
    return flag or os.environ.get("EVENTQ_DEBUG", "").strip().lower() in _TRUE


def print_traceback(exc: BaseException) -> None:
    """The full traceback of ``exc`` (and its causes) on stderr, redacted."""
    click.echo(redact("".join(traceback.format_exception(exc))).rstrip(), err=True)


_LIBRARY_DIRS = tuple(
    {str(Path(p).resolve()) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                      sysconfig.get_paths()["platlib"], Path(__file__).parent)}
)


_EVENTQ_DIR = (str(Path(__file__).parent.resolve()),)


def origin(exc: BaseException, *, within: tuple[str, ...] | None = None) -> str | None:
    """Where ``exc`` came from, as ``file:line`` (relative to the working directory): the deepest frame
    under one of the ``within`` directories, or by default the deepest outside the standard library,
    site-packages and eventq (the user's code); else the deepest frame."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_short(exc.filename)}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if within is None:
        chosen = [f for f in frames if not str(Path(f.filename).resolve()).startswith(_LIBRARY_DIRS)]
    else:
        chosen = [f for f in frames if str(Path(f.filename).resolve()).startswith(within)]
    chosen = chosen or frames
    return f"{_short(chosen[-1].filename)}:{chosen[-1].lineno}" if chosen else None


def _short(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return filename


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the message's first line; SyntaxError without its location)."""
    text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Group(click.Group):
    """The ``eventq`` group: the last-resort safety net that makes every failure one redacted line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if debugging(ctx) and exc.__cause__ is not None:
                print_traceback(exc.__cause__)
            vars(exc)["message"] = redact(exc.message)  # click marks it Final; the line must not leak
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except EventqError as exc:
            if debugging(ctx):
                print_traceback(exc)
            raise click.ClickException(redact(_describe(exc))) from exc
        except OSError as exc:  # a file or socket the user named: say which, and why
            if debugging(ctx):
                print_traceback(exc)
            what = f"cannot use {exc.filename!r}: " if exc.filename else ""
            raise click.ClickException(
                redact(f"{what}{exc.strerror or one_line(exc)}; {TRACEBACK_HINT}")
            ) from exc
        except Exception as exc:
            if debugging(ctx):
                print_traceback(exc)
            where = origin(exc, within=_EVENTQ_DIR)
            raise click.ClickException(
                redact(f"unexpected {one_line(exc)}" + (f" ({where})" if where else "") + f"; {TRACEBACK_HINT}")
            ) from exc


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


def option(table: Table[Any], field: str, *decls: str) -> Callable[[F], F]:
    """A click option that overrides ``field`` of ``table``'s class, built from its record.

    ``decls`` are click's (flags, then the parameter name; by default ``--field-name`` and
    ``field``). The type and range are the record's, and the help names the variable that
    applies when the option is not given: the option itself reads no variable (its value,
    or None, goes to :func:`settings`), so option and variable get the same checks.
    """
    setting = table[field]
    flags = [d for d in decls if d.startswith("-")] or ["--" + field.replace("_", "-")]
    name = next((d for d in decls if not d.startswith("-")), field)
    default = table.default_text(setting)
    help_text = (
        setting.help[:1].upper() + setting.help[1:]
        + (" (repeatable; " if setting.kind == "csv" else " (")
        + f"default: {setting.variable}" + (f", else {default}" if default is not None else "") + ")."
    )
    return click.option(
        *flags, name, type=_click_type(setting), default=None, multiple=setting.kind == "csv", help=help_text
    )


def _click_type(setting: Setting) -> click.ParamType[Any]:
    if setting.kind == "int":
        top = int(setting.highest) if setting.maximum is not None else None
        return click.IntRange(int(setting.lowest), top)
    if setting.kind in ("float", "seconds"):
        return click.FloatRange(setting.lowest, setting.highest)
    if setting.kind == "choice":
        return click.Choice(setting.choices, case_sensitive=False)
    if setting.kind == "bool":
        return click.BOOL
    return click.STRING


def kafka_options(func: F) -> F:
    """Options shared by commands that talk to Kafka: ``--bootstrap-servers`` (unset, its variable applies)."""
    return option(KAFKA, "bootstrap_servers")(func)


def database_options(func: F) -> F:
    """The ``--database-url`` option (unset, its variable applies)."""
    return option(DATABASE, "url", "--database-url", "database_url")(func)
