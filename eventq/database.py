"""The one boundary between eventq and PostgreSQL (asyncpg).

Connections are opened from :class:`DatabaseSettings` here, and connection failures
are translated into :class:`~eventq.errors.DatabaseUnavailable` with what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asyncpg

from eventq.config import env_float, env_str
from eventq.errors import ConfigError, DatabaseUnavailable

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:54320/eventq"  # the dev stack's


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    """Where PostgreSQL is. The URL's password is kept out of ``repr`` and messages."""

    url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ConfigError(
                f"database URL {self.safe_url!r} is not a PostgreSQL URL; set EVENTQ_DATABASE_URL "
                "to postgresql://user[:password]@host:port/database"
            )

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by ``***``: safe to log and show."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        """Read ``EVENTQ_DATABASE_URL`` and ``EVENTQ_DB_CONNECT_TIMEOUT_S``."""
        e = os.environ if env is None else env
        return cls(
            url=env_str(e, "EVENTQ_DATABASE_URL", DEFAULT_DATABASE_URL) or DEFAULT_DATABASE_URL,
            connect_timeout_s=env_float(e, "EVENTQ_DB_CONNECT_TIMEOUT_S", 5.0),
        )


async def connect(settings: DatabaseSettings) -> asyncpg.Connection:
    """One connection; raises DatabaseUnavailable (retriable) if PostgreSQL does not answer."""
    try:
        return await asyncpg.connect(settings.url, timeout=settings.connect_timeout_s)
    except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
        raise DatabaseUnavailable(settings.safe_url, f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(settings.safe_url, f"{type(exc).__name__}: {exc}", retriable=False) from exc


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
