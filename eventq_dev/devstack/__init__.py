"""A local development stack without Docker: one Kafka broker and one PostgreSQL cluster.

* :mod:`eventq_dev.devstack.kafka` - :class:`~eventq_dev.devstack.kafka.KafkaBroker`, a real
  single-node KRaft broker run from jars fetched once from Maven Central.
* :mod:`eventq_dev.devstack.postgres` - :class:`~eventq_dev.devstack.postgres.PostgresCluster`,
  a throw-away cluster run from Debian's PostgreSQL binaries.
* :mod:`eventq_dev.devstack.commands` - ``up()``/``down()``/``status()`` for the whole
  stack and the ``eventq dev`` click group.

This module holds what they share: :class:`StackSettings` and a few process/port helpers.
Nothing here configures logging or touches global state.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from eventq.database import DatabaseSettings
from eventq.errors import ConfigError

__all__ = ["DATABASE", "StackSettings", "own_dsn"]

DATABASE = "eventq"
"""The database the stack's own PostgreSQL holds; :func:`own_dsn` points at it."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def own_dsn(pg_port: int) -> str:
    """The DSN of the stack's own PostgreSQL on ``pg_port`` (what ``eventq dev up`` exports)."""
    return f"postgresql://postgres@127.0.0.1:{pg_port}/{DATABASE}"


def _is_own_dsn(url: str, pg_port: int) -> bool:
    # What `eval "$(eventq dev up)"` exported, give or take the scheme alias and "localhost".
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("postgresql", "postgres")
        and parts.username == "postgres"
        and parts.password is None
        and parts.hostname in _LOOPBACK
        and port == pg_port
        and parts.path == f"/{DATABASE}"
        and not parts.query
    )


@dataclass(frozen=True, kw_only=True)
class StackSettings:
    """Where the dev stack lives and which loopback ports it uses.

    ``database_url`` set means PostgreSQL is external: ``up`` does not start the stack's
    own cluster and only checks that the URL is reachable, and nothing ever stops it. The
    stack's own DSN (:func:`own_dsn`, what ``eval "$(eventq dev up)"`` exports) is not
    external: it is turned into None here, so that shell still starts and stops the
    stack's own PostgreSQL. ``kafka_lib`` set means the Kafka jars are taken from that
    folder and Maven is never run.
    """

    dir: Path
    kafka_port: int = 9092
    controller_port: int = 9093
    pg_port: int = 54320
    database_url: str | None = None
    kafka_lib: Path | None = None

    def __post_init__(self) -> None:
        if self.database_url is not None and _is_own_dsn(self.database_url, self.pg_port):
            object.__setattr__(self, "database_url", None)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None
    ) -> StackSettings:
        """Read ``EVENTQ_STACK_DIR``, ``EVENTQ_DEV_KAFKA_PORT``, ``EVENTQ_DEV_CONTROLLER_PORT``,
        ``EVENTQ_DEV_PG_PORT``, ``EVENTQ_DATABASE_URL`` and ``EVENTQ_KAFKA_LIB``.

        Empty variables count as unset, and so does an ``EVENTQ_DATABASE_URL`` equal to
        the stack's own DSN. Raises :class:`ConfigError` naming the variable for any
        invalid value.
        """
        env = os.environ if environ is None else environ
        base = Path.cwd() if cwd is None else cwd

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        raw_dir = get("EVENTQ_STACK_DIR")
        stack_dir = (base / (raw_dir if raw_dir is not None else ".eventq")).resolve()
        kafka_port = _port(get("EVENTQ_DEV_KAFKA_PORT"), "EVENTQ_DEV_KAFKA_PORT", 9092)
        if kafka_port == 65535 and get("EVENTQ_DEV_CONTROLLER_PORT") is None:
            raise ConfigError(
                "EVENTQ_DEV_KAFKA_PORT=65535 leaves no default controller port (port + 1); "
                "set EVENTQ_DEV_CONTROLLER_PORT or pick a lower broker port"
            )
        controller_port = _port(
            get("EVENTQ_DEV_CONTROLLER_PORT"),
            "EVENTQ_DEV_CONTROLLER_PORT",
            kafka_port + 1,
        )
        pg_port = _port(get("EVENTQ_DEV_PG_PORT"), "EVENTQ_DEV_PG_PORT", 54320)
        if len({kafka_port, controller_port, pg_port}) != 3:
            raise ConfigError(
                f"dev stack ports must differ: Kafka {kafka_port} (EVENTQ_DEV_KAFKA_PORT), "
                f"controller {controller_port} (EVENTQ_DEV_CONTROLLER_PORT), "
                f"PostgreSQL {pg_port} (EVENTQ_DEV_PG_PORT); change one of them"
            )
        database_url = get("EVENTQ_DATABASE_URL")
        if database_url is not None:
            DatabaseSettings(url=database_url)  # the checks (and redaction) every command applies
        raw_lib = get("EVENTQ_KAFKA_LIB")
        kafka_lib = (base / raw_lib).resolve() if raw_lib is not None else None
        if kafka_lib is not None and not kafka_lib.is_dir():
            raise ConfigError(
                f"EVENTQ_KAFKA_LIB={raw_lib!r} is not a directory; point it at a folder of "
                "Kafka jars (kafka_2.13-*.jar and its dependencies) or unset it"
            )
        return cls(
            dir=stack_dir,
            kafka_port=kafka_port,
            controller_port=controller_port,
            pg_port=pg_port,
            database_url=database_url,
            kafka_lib=kafka_lib,
        )

    @property
    def bootstrap_servers(self) -> str:
        """The value for ``EVENTQ_BOOTSTRAP_SERVERS`` that reaches the dev broker."""
        return f"127.0.0.1:{self.kafka_port}"


def _port(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a port number; set it to an integer between 1 and 65535 "
            "or unset it to use the default"
        ) from None
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"{name}={port} is out of range; use a port between 1 and 65535"
        )
    return port


def port_is_free(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the JVM and PostgreSQL set, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_matches(pid: int, *needles: str) -> bool:
    """True if ``pid`` is a live (not zombie) process whose argv contains every needle.

    Reads ``/proc`` so that a stale pid file whose pid now belongs to another program,
    or a dead child not yet reaped, never counts as running.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may contain ")".
    state = stat.rpartition(")")[2].split()[:1]
    if not state or state[0] in ("Z", "X"):
        return False
    args = [a.decode(errors="replace") for a in argv if a]
    return all(any(needle in arg for arg in args) for needle in needles)


def read_pid(path: Path) -> int | None:
    """The integer on the first line of ``path``, or None if it is missing or garbled."""
    try:
        first = path.read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def tail_lines(path: Path, count: int = 20) -> str:
    """The last ``count`` lines of a text file, or a note saying it does not exist."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    lines = data.splitlines()[-count:]
    return "\n".join(lines) if lines else f"({path} is empty)"
