"""The daemon's own questions to PostgreSQL and Kafka, asked every second in the background.

Guarantees:

- **Each question is bounded.** A check that does not finish within ``timeout_s`` (2 s)
  counts as "does not answer", however the service is stuck (stopped, partitioned,
  overloaded); a stuck probe connection is dropped and a new one opened next time,
  itself within the same bound.
- **The pool does not hide an outage.** PostgreSQL is asked ``SELECT 1`` on a
  connection of the probe's own, outside the daemon's pool, so a pool whose
  connections are all busy (handlers waiting on a stopped server) is not mistaken for
  a healthy one.
- **State and logs do not wait for a caller.** Each verdict goes to
  :class:`~eventq.consumers.health.Status` (which logs an outage once and its end
  once), so an outage is logged while idle and a 503 is answered from it at once.
- **A 200 is never older than its request.** ``/readyz`` calls :meth:`Prober.confirm`
  when the state says ready, so a service that stopped answering a moment ago is not
  reported ready from the round before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from eventq.consumers.health import Status
from eventq.database import DatabaseSettings, connect

log = structlog.get_logger("eventq.consumer")

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0


class DatabaseProbe:
    """``SELECT 1`` on one connection of its own, (re)connected within the probe's bound."""

    def __init__(self, settings: DatabaseSettings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._settings = dataclasses.replace(settings, connect_timeout_s=min(settings.connect_timeout_s, timeout_s))
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    async def __call__(self) -> None:
        """Return if PostgreSQL answers within the bound; raise why not otherwise."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self._settings)
                await self._conn.fetchval("SELECT 1")
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        """Drop the probe's connection (without a goodbye: the server may be the one stuck)."""
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


class Prober:
    """Asks both services every ``interval_s`` (concurrently, each within ``timeout_s``) and tells ``status``."""

    def __init__(
        self,
        status: Status,
        *,
        database: Callable[[], Awaitable[object]],
        broker: Callable[[], Awaitable[object]],
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.status = status
        self._database = database
        self._broker = broker
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self._round: tuple[float, asyncio.Task[None]] | None = None  # (when it began, the round in flight)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="eventq-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # (it waits on a shielded round: the round itself goes on)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._round is not None:
            # Let a round in flight end within its bound: asyncpg, cancelled in the middle of
            # its handshake, leaves a "Future exception was never retrieved" error behind.
            _, late = await asyncio.wait([self._round[1]], timeout=self._timeout_s + 1)
            for task in late:
                task.cancel()
            self._round = None
        if isinstance(self._database, DatabaseProbe):
            self._database.close()

    async def confirm(self) -> None:
        """Return once a round that began after the call has finished, unless one already says "not ready".

        Rounds are shared (by the loop and every caller), so the probe connection runs one
        query at a time and a burst of /readyz requests costs one round.
        """
        called = time.monotonic()
        while True:
            if self._round is None or self._round[1].done():
                self._round = (time.monotonic(), asyncio.create_task(self.probe_once(), name="eventq-probe"))
            began, task = self._round
            await asyncio.shield(task)
            if began >= called or not self.status.ready:
                return

    async def probe_once(self) -> None:
        """Ask both services once and record the verdicts."""
        database, broker = await asyncio.gather(
            self._ask(self._database), self._ask(self._broker)
        )
        self.status.database_probed(database)
        self.status.broker_probed(broker)

    async def _ask(self, check: Callable[[], Awaitable[object]]) -> BaseException | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await check()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "does not answer"
            if isinstance(exc, TimeoutError) and not str(exc):
                return TimeoutError(f"no answer within {self._timeout_s:g} s")
            return exc
        return None

    async def _loop(self) -> None:
        while True:
            try:
                await self.confirm()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let the probe die; say so once per failure
                log.warning("health.probe_failed", error_type=type(exc).__name__, error=str(exc)[:1000])
            await asyncio.sleep(self._interval_s)
