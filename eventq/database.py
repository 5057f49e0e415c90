"""The one boundary between eventq and PostgreSQL (asyncpg).

Connections are opened from :class:`DatabaseSettings` here, and connection failures
are translated into :class:`~eventq.errors.DatabaseUnavailable` with what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from eventq.errors import ConfigError, DatabaseUnavailable
from eventq.redact import redact
from eventq.settings_table import Setting, table

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:54320/eventq"  # the dev stack's
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # libpq's


def _ports(netloc: str) -> list[str]:
    """The port of each ``host[:port]`` of a (multi-host) netloc; "" where none is given."""
    hosts = netloc.rpartition("@")[2]
    ports = []
    for host in hosts.split(","):
        if host.startswith("["):  # [IPv6]:port
            ports.append(host.partition("]")[2].removeprefix(":"))
        else:
            ports.append(host.rpartition(":")[2] if ":" in host else "")
    return ports


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    """Where PostgreSQL is. Passwords in the URL are kept out of ``repr`` and messages.

    The URL is checked on construction as far as it can be without connecting (scheme,
    host, ports, ``sslmode``): a bad one raises ConfigError naming EVENTQ_DATABASE_URL,
    showing the URL redacted.
    """

    url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        DATABASE.check(self)
        var = DATABASE.variable("url")
        fix = f"set {var} to postgresql://user[:password]@host:port/database"
        try:
            parts = urlsplit(self.url)
        except ValueError as exc:  # e.g. an unclosed [IPv6 bracket
            raise ConfigError(f"database URL {self.safe_url!r} cannot be parsed ({exc}); {fix}") from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.netloc.rpartition("@")[2]:
            raise ConfigError(f"database URL {self.safe_url!r} is not a PostgreSQL URL; {fix}")
        for port in _ports(parts.netloc):
            if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(
                    f"database URL {self.safe_url!r} has port {port!r}; a port is a number from 1 to 65535 ({var})"
                )
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name.lower() == "sslmode" and value not in SSLMODES:
                raise ConfigError(
                    f"database URL {self.safe_url!r} has sslmode={value!r}; use one of {', '.join(SSLMODES)} ({var})"
                )

    @property
    def safe_url(self) -> str:
        """The URL with every password (user-info, ``password=``, ``sslpassword=``) as ``***``: safe to log."""
        return redact(self.url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DatabaseSettings:
        """Read the variables of :data:`DATABASE` (README, Configuration); ``overrides`` win and are not read."""
        return DATABASE.read(env, overrides)


DATABASE = table(
    DatabaseSettings,
    Setting("url", "EVENTQ_DATABASE_URL", help="PostgreSQL URL", default_text="the dev stack's"),
    Setting("connect_timeout_s", "EVENTQ_DB_CONNECT_TIMEOUT_S", "seconds", minimum=0.001,
            help="longest wait for a connection"),
)
"""The database variables, one record per field of :class:`DatabaseSettings`."""


async def connect(settings: DatabaseSettings, server_settings: dict[str, str] | None = None) -> asyncpg.Connection:
    """One connection (with these session settings); raises DatabaseUnavailable (retriable) if PostgreSQL
    does not answer.

    Whatever asyncpg raises is translated here, with the URL redacted: a URL it cannot use
    becomes ConfigError naming EVENTQ_DATABASE_URL.
    """
    try:
        return await asyncpg.connect(settings.url, timeout=settings.connect_timeout_s, server_settings=server_settings)
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
        raise DatabaseUnavailable(settings.safe_url, redact(f"{type(exc).__name__}: {exc}")) from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(
            settings.safe_url, redact(f"{type(exc).__name__}: {exc}"), retriable=False
        ) from exc
    except (asyncpg.ClientConfigurationError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(
            f"database URL {settings.safe_url!r} cannot be used: {redact(str(exc))}; fix {DATABASE.variable('url')} "
            "(postgresql://user[:password]@host:port/database)"
        ) from exc


def is_outage(exc: BaseException) -> bool:
    """True if ``exc`` means PostgreSQL is unreachable or the connection broke (worth waiting for)."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.retriable
    return isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.CrashShutdownError,
            ConnectionError,
            TimeoutError,
        ),
    )


async def answers(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """True unless the database behind ``pool`` fails or does not answer ``SELECT 1`` within ``timeout``.

    A pool with no free connection for ``timeout`` counts as answering: it is busy, not
    down. A connection whose query stalled is terminated, since a stalled server would
    make a clean release wait as well.
    """
    try:
        conn = await pool.acquire(timeout=timeout)
    except TimeoutError:
        return True
    except Exception:  # noqa: BLE001 - cannot connect: does not answer
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        conn.terminate()
        return False
    finally:
        await pool.release(conn)
    return True
