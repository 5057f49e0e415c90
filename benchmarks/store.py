"""processed_events store: record() and finished() rates before and after a change, same run.

*Before* is ``eventq/consumers/store.py`` as of commit 2afec73 (key ``(event_id,
consumer_group)``, every column comma-joined), loaded from ``git show`` under another
module name; *after* is the working tree's module (the same key plus a ``source``
column, a second source of an id under an alternate key, topic and source in one
``text[]`` parameter). Each
version gets a fresh database on the dev server, migrated by its own module and
pre-filled with ``--rows`` rows (time-ordered ids, 4 consumer groups, one
``INSERT … SELECT generate_series``), then ``VACUUM ANALYZE``.

Timed, through an asyncpg pool as the daemon uses it (``store.record(pool, …)``):

- **record()**: ``--batches`` calls of 500 rows with fresh UUIDv7 ids
  (``new_event_id``), rows/s. The rows are built before the clock starts.
- **finished()**: ``--batches`` lookups of 500 ids, ``--found`` of them (default half)
  rows of the pre-fill (same group, same source), the rest fresh ids; ids/s.

One unmeasured warm-up pass per version; then the versions take turns round by round
(the order swaps every round); the median of ``--rounds`` rounds is reported, with the
after/before ratio. (The parameter encodings tried on the way are in docs/benchmarks.md.)

    python benchmarks/store.py [--rows 1000000] [--rounds 3] [--batches 400] [--found 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from eventq.consumers import store  # noqa: E402
from eventq.schemas.envelope import new_event_id  # noqa: E402

BEFORE_COMMIT = "2afec73"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:54320/eventq"
BATCH = 500  # rows per record() call and ids per finished() call (the daemon's default batch)
GROUP = "group-0"
GROUPS = 4
TOPIC = "bench.orders.v1"
SOURCE = "/bench/orders"

RecordFn = Callable[[Any, str, list[Any]], Awaitable[None]]
FinishedFn = Callable[[Any, str, list[Any]], Awaitable[object]]


def load_before() -> ModuleType:
    """The store module of BEFORE_COMMIT, imported as ``store_before`` (it needs only asyncpg)."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{BEFORE_COMMIT}:eventq/consumers/store.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="store_before_", delete=False) as f:
        f.write(text)
    try:
        spec = importlib.util.spec_from_file_location("store_before", f.name)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


@dataclass
class Version:
    name: str
    module: ModuleType
    record: RecordFn
    finished: FinishedFn
    with_source: bool
    url: str = ""
    pool: Any = None


async def create_database(server_url: str, template: str | None = None) -> str:
    name = f"bench_store_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return name


def database_url(server_url: str, name: str) -> str:
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


async def prepare(url: str, module: ModuleType, rows: int, with_source: bool) -> None:
    """Migrate with ``module`` and pre-fill ``rows`` rows with ids older than any new UUIDv7."""
    conn = await asyncpg.connect(url)
    try:
        await module.migrate(conn)
        # Time-ordered ids (as UUIDv7s are): 48-bit millisecond prefix, 80 random bits.
        start_ms = int(time.time() * 1000) - rows
        await conn.execute(
            'INSERT INTO processed_events (consumer_group, event_id, topic, partition, "offset", outcome'
            + (", source)" if with_source else ")")
            + " SELECT 'group-' || (i % $3), (lpad(to_hex($2::bigint + i), 12, '0') || "
            "substr(md5(random()::text), 1, 20))::uuid, $4, i % 6, i, 'handled'"
            + (", $5" if with_source else "")
            + " FROM generate_series(1, $1::bigint) AS i",
            rows, start_ms, GROUPS, TOPIC, *([SOURCE] if with_source else []),
        )
        await conn.execute("VACUUM ANALYZE processed_events")
    finally:
        await conn.close()


async def sample_existing(url: str, n: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT event_id::text FROM processed_events WHERE consumer_group = $1 ORDER BY random() LIMIT $2",
            GROUP, n,
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


def record_batches(v: Version, batches: int) -> list[list[Any]]:
    if not v.with_source:
        processed = v.module.Processed
        return [[processed(new_event_id(), TOPIC, i % 6, i, "handled") for i in range(BATCH)] for _ in range(batches)]
    return [[store.Processed(new_event_id(), TOPIC, i % 6, i, "handled", SOURCE) for i in range(BATCH)]
            for _ in range(batches)]


FOUND = [BATCH // 2]  # ids of a lookup batch that exist (--found sets it)


def lookup_batches(v: Version, existing: list[str], batches: int) -> list[list[Any]]:
    out: list[list[Any]] = []
    rng = random.Random(7)
    for b in range(batches):
        half = FOUND[0]  # (a small pre-fill has fewer distinct rows: they repeat across batches)
        ids = [existing[(b * half + k) % len(existing)] for k in range(half)]
        ids += [new_event_id() for _ in range(BATCH - half)]
        rng.shuffle(ids)
        out.append([(i, SOURCE) for i in ids] if v.with_source else ids)
    return out


async def turn(v: Version, existing: list[str], batches: int) -> tuple[float, float]:
    """record() rows/s and finished() ids/s of one round."""
    rows = record_batches(v, batches)
    started = time.perf_counter()
    for batch in rows:
        await v.record(v.pool, GROUP, batch)
    record_rate = batches * BATCH / (time.perf_counter() - started)
    lookups = lookup_batches(v, existing, batches)
    started = time.perf_counter()
    for batch in lookups:
        found = await v.finished(v.pool, GROUP, batch)
    lookup_rate = batches * BATCH / (time.perf_counter() - started)
    assert len(found) == FOUND[0], f"{v.name}: {len(found)} of {BATCH} ids found, expected {FOUND[0]}"  # type: ignore[arg-type]
    return record_rate, lookup_rate


async def run(args: argparse.Namespace) -> int:
    server_url = os.environ.get("EVENTQ_BENCH_SERVER_URL", DEFAULT_DATABASE_URL)
    before = load_before()
    versions = [
        Version("before (2afec73)", before, before.record, before.finished, with_source=False),
        Version("after (working tree)", store, store.record, store.finished, with_source=True),
    ]
    names: list[str] = []
    try:
        started = time.perf_counter()
        for v in versions:
            names.append(await create_database(server_url))
            v.url = database_url(server_url, names[-1])
            await prepare(v.url, v.module, args.rows, v.with_source)
        print(f"store benchmark: {args.rows:,} rows pre-filled per database in "
              f"{time.perf_counter() - started:.0f} s; {args.batches} batches of {BATCH} per measure, "
              f"median of {args.rounds} rounds", flush=True)
        # The same existing ids for every version: the pre-fill differs, so sample each one.
        existing = {v.name: await sample_existing(v.url, args.batches * BATCH // 2) for v in versions}
        if min(len(ids) for ids in existing.values()) < BATCH // 2:
            raise SystemExit(f"--rows {args.rows} leaves fewer than {BATCH // 2} rows of {GROUP} to look up")
        for v in versions:
            v.pool = await asyncpg.create_pool(v.url, min_size=2, max_size=2, )
            await turn(v, existing[v.name], max(args.batches // 10, 1))  # warm-up, unmeasured
        results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in versions}
        for r in range(args.rounds):
            for v in versions if r % 2 == 0 else versions[::-1]:
                results[v.name].append(await turn(v, existing[v.name], args.batches))
        return report(results, [v.name for v in versions])
    finally:
        for v in versions:
            if v.pool is not None:
                await v.pool.close()
        conn = await asyncpg.connect(server_url)
        try:
            for name in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def report(results: dict[str, list[tuple[float, float]]], order: list[str]) -> int:
    medians = {name: (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))
               for name, rounds in results.items()}
    width = max(len(n) for n in order)
    print(f"{'version':<{width}}  {'record rows/s':>13}  {'finished ids/s':>14}  rounds (record | finished)")
    for name in order:
        rounds = results[name]
        print(f"{name:<{width}}  {medians[name][0]:>13,.0f}  {medians[name][1]:>14,.0f}  "
              + " / ".join(f"{r[0]:,.0f}" for r in rounds) + " | " + " / ".join(f"{r[1]:,.0f}" for r in rounds))
    base = medians[order[0]]
    worst = 1.0
    for name in order[1:]:
        ratio = (medians[name][0] / base[0], medians[name][1] / base[1])
        worst = min(worst, *ratio) if name == order[1] else worst
        print(f"{name} / before: record {ratio[0]:.2f}x, finished {ratio[1]:.2f}x")
    if worst < 0.85:
        print(f"after is {1 - worst:.0%} below before in one measure: over the 15 % the issue allows")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows pre-filled per database")
    parser.add_argument("--rounds", "--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, default=400, help="batches of 500 per measure and round")
    parser.add_argument("--found", type=float, default=0.5,
                        help="share of a lookup batch's ids that exist (0: steady state, 0.5: after a crash)")
    args = parser.parse_known_args()[0]  # (run.py passes every benchmark the same arguments)
    FOUND[0] = round(BATCH * args.found)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
