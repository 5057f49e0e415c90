"""Which shares of the outbox this relay publishes: PostgreSQL session advisory locks.

Each relay holds a shared *member* lock while connected, and an exclusive lock on each
share it publishes, all on its one connection. So:

- at most one relay publishes a share at a time (PostgreSQL grants the lock to one
  session);
- a relay that dies (or whose connection drops) loses its locks at once, when
  PostgreSQL sees the connection close (TCP keep-alives bound that to about 11 s
  for a host that vanished), and the others take its shares at their next
  :meth:`Shares.balance`, every second;
- shares are spread evenly: each relay aims at ``ceil(SHARES / relays)``, releasing
  what it holds above that and taking free shares below it.
"""

from __future__ import annotations

import math
from typing import Any

import structlog

from eventq.outbox.rows import SHARE_LOCK_CLASS, SHARES
from eventq.outbox.table import HOLDERS

log = structlog.get_logger("eventq.outbox")

BALANCE_INTERVAL_S = 1.0
TIMEOUT_S = 10.0  # a lock statement that takes longer means the connection is stuck


class Shares:
    """The shares held on one connection; :meth:`lost` when that connection is gone."""

    def __init__(self) -> None:
        self.held: tuple[int, ...] = ()

    async def join(self, conn: Any) -> None:
        """Take the member lock on a new connection (nothing is held yet)."""
        self.held = ()
        await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", SHARE_LOCK_CLASS, SHARES, timeout=TIMEOUT_S)

    def lost(self, *, closing: bool = False) -> None:
        """The connection is gone (or ``closing``: being closed), and with it every lock."""
        if self.held:
            if closing:
                log.info("outbox.shares_released", shares=list(self.held))
            else:
                log.warning("outbox.shares_lost", shares=list(self.held))
        self.held = ()

    async def balance(self, conn: Any) -> None:
        """Release shares above this relay's fair number, take free ones below it."""
        rows = await conn.fetch(HOLDERS, SHARE_LOCK_CLASS, timeout=TIMEOUT_S)
        members = {r["pid"] for r in rows if r["share"] == SHARES}
        taken = {r["share"] for r in rows if r["share"] < SHARES}
        target = math.ceil(SHARES / max(1, len(members)))
        held = set(self.held)
        for share in sorted(held, reverse=True)[: max(0, len(held) - target)]:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", SHARE_LOCK_CLASS, share, timeout=TIMEOUT_S)
            held.discard(share)
        for share in range(SHARES):
            if len(held) >= target:
                break
            if share not in taken and share not in held and await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", SHARE_LOCK_CLASS, share, timeout=TIMEOUT_S
            ):
                held.add(share)
        now = tuple(sorted(held))
        if now != self.held:
            log.info("outbox.shares", shares=list(now), relays=len(members))
        self.held = now
