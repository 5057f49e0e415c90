"""The outbox rows' faults on the relays themselves: O1 (kill -9 mid-round) and O2 (one of two
relays killed). Both time their kill by watching the topic grow and the outbox shrink.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg

from tests.faults.outbox import RELAY_BATCH, TopicEnds, holders

if TYPE_CHECKING:
    from tests.faults.faults import Scene


async def kill_relay_mid_batch(scene: Scene) -> None:
    """O1: kill -9 the relay in the middle of a round while it works through a backlog; the
    supervisor restarts it.

    The relay starts once five rounds of rows wait (``Fault.relay_backlog``), with this
    already watching: the topic's end offsets and the outbox's row count are polled every
    few milliseconds, and the kill goes out when records reached the topic since the last
    poll and no row was deleted: the relay is between the broker's append and deleting
    the round's rows (a round takes ~20 ms, about half of it in that state). It spares
    0–2 rounds first, and kills only while a round's worth of rows still waits; until the
    window ends. A killed round is not deleted and rows keep coming while the successor
    starts (~2 s), so each successor finds a backlog too.
    """
    relays = scene.relays
    assert relays is not None
    end = scene.until()
    conn = await asyncpg.connect(scene.database)
    ends = TopicEnds(scene.services.kafka, scene.topic)
    await ends.start()
    kills = 0
    skip = scene.rng.randint(0, 2)  # rounds the next relay may finish before its kill
    try:
        last = (await ends.total(), await _count(conn))
        while time.monotonic() < end:
            await asyncio.sleep(0.002)
            now = (await ends.total(), await _count(conn))
            appended, deleted, last = now[0] > last[0], now[1] < last[1], now
            if deleted and relays.procs:
                skip -= 1
            if not appended or deleted or skip > 0 or now[1] < RELAY_BATCH or not relays.procs:
                continue
            [pid] = relays.procs
            relays.kill9(pid)
            kills += 1
            skip = scene.rng.randint(0, 2)
            scene.done.note(f"kill -9 relay {pid} mid-round, {now[1]} rows in the outbox")
    finally:
        await ends.stop()
        await conn.close()
    if not kills:
        scene.done.not_applied.append("the relay was never seen mid-round with a backlog: no kill")


async def kill_one_of_two_relays(scene: Scene) -> None:
    """O2: two relays split the shares; kill -9 one mid-run and do not restart it. The other must
    take its shares (within :data:`TAKEOVER_BOUND_S`) and publish their rows.

    The kill comes 30–60 % into the window, at the first poll (every few ms, for up to
    3 s) that finds records appended to the topic since the last one while rows of a
    relay's shares wait: that relay, most likely in the middle of a round, is the one
    killed (a random one if no poll finds that).
    """
    relays = scene.relays
    assert relays is not None
    end = scene.until()
    split = await _until(lambda held: sorted(len(s) for s in held.values()) == [8, 8], scene.database, 30)
    if split is None:
        scene.done.not_applied.append("the two relays never held 8 shares each")
        return
    await asyncio.sleep(scene.rng.uniform(0.3, 0.6) * (end - time.monotonic()))
    held = {pid: shares for pid, shares in (await holders(scene.database)).items() if shares and pid in relays.procs}
    if not held:
        scene.done.not_applied.append("no running relay held a share when the kill was due")
        return
    pid, waiting = await _busy_relay(scene, held)
    relays.size = 1  # first, so the supervisor does not replace it
    relays.kill9(pid)
    killed = time.monotonic()
    scene.done.note(f"kill -9 relay {pid} holding shares {sorted(held[pid])} ({waiting} of their rows waiting); "
                    "not restarted")  # fmt: skip
    took = await _until(lambda held: sorted(len(s) for s in held.values()) == [16], scene.database,
                        TAKEOVER_BOUND_S)  # fmt: skip
    if took is None:
        scene.done.not_applied.append(f"no relay held all 16 shares within {TAKEOVER_BOUND_S:.0f} s of the kill")
        return
    scene.done.note(f"relay {next(iter(took))} holds all 16 shares {time.monotonic() - killed:.1f} s after the kill")
    await asyncio.sleep(max(0.0, end - time.monotonic()))


async def _busy_relay(scene: Scene, held: dict[int, list[int]], timeout: float = 3.0) -> tuple[int, int]:
    """A relay (pid, rows waiting in its shares) that is likely mid-round; see kill_one_of_two_relays."""
    owner = {share: pid for pid, shares in held.items() for share in shares}
    conn = await asyncpg.connect(scene.database)
    ends = TopicEnds(scene.services.kafka, scene.topic)
    await ends.start()
    try:
        deadline = time.monotonic() + timeout
        last = await ends.total()
        waiting: Counter[int] = Counter()
        while time.monotonic() < deadline:
            now = await ends.total()
            waiting = Counter()
            for share, count in await conn.fetch("SELECT share, count(*) FROM eventq_outbox GROUP BY share"):
                if share in owner:
                    waiting[owner[share]] += count
            if now > last and waiting:
                return waiting.most_common(1)[0]
            last = now
            await asyncio.sleep(0.002)
        pid = scene.rng.choice(sorted(held))
        return pid, waiting[pid]
    finally:
        await ends.stop()
        await conn.close()


TAKEOVER_BOUND_S = 15.0
"""O2: a surviving relay must hold a killed relay's shares this soon (its shares' rows wait meanwhile)."""


async def _count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM eventq_outbox")
    return count


async def _until(
    condition: Callable[[dict[int, list[int]]], bool], database: str, timeout: float
) -> dict[int, list[int]] | None:
    """The relays' shares (:func:`holders`) once ``condition`` holds for them; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = {pid: shares for pid, shares in (await holders(database)).items() if shares}
        if condition(held):
            return held
        await asyncio.sleep(0.1)
    return None
