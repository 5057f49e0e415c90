"""processed_events store: record() and finished() rates before and after a change, same run.

*Before* is ``eventq/consumers/store.py`` as of commit 2afec73 (key ``(event_id,
consumer_group)``, every column comma-joined), loaded from ``git show`` under another
module name; *after* is the working tree's module (key ``(event_id, consumer_group,
source)``, topic and source as ``text[]`` parameters, ids through ``row_id()``). Each
version gets a fresh database on the dev server, migrated by its own module and
pre-filled with ``--rows`` rows (time-ordered ids, 4 consumer groups, one
``INSERT … SELECT generate_series``), then ``VACUUM ANALYZE``.

Timed, through an asyncpg pool as the daemon uses it (``store.record(pool, …)``):

- **record()**: ``--batches`` calls of 500 rows with fresh UUIDv7 ids
  (``new_event_id``), rows/s. The rows are built before the clock starts.
- **finished()**: ``--batches`` lookups of 500 ids, half of them rows of the pre-fill
  (same group, same source), half fresh ids; ids/s.

One unmeasured warm-up pass per version; then the versions take turns round by round
(the order swaps every round); the median of ``--rounds`` rounds is reported, with the
after/before ratio. ``--variants`` also times candidate designs of the after schema
(each on its own copy of the after database): see VARIANTS.

    python benchmarks/store.py [--rows 1000000] [--rounds 3] [--batches 400] [--variants]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import orjson  # noqa: E402

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


# --- Candidate designs of the after schema (--variants). Text from records (topic,
# source) never enters a statement's syntax in any of them. ---

_INSERT = 'INSERT INTO processed_events (consumer_group, event_id, topic, partition, "offset", outcome, source) '
_ON_CONFLICT: str = store._ON_CONFLICT


def _keyed(events: Sequence[store.Processed]) -> list[tuple[str, store.Processed]]:
    return [(store.row_id(e.event_id), e) for e in events]  # (batches here have no duplicates)


_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_LIST = re.compile(f"(?:{_UUID},)*{_UUID}")


def _keyed_batch(events: Sequence[store.Processed]) -> list[tuple[str, store.Processed]]:
    """row_id() of every id, with one regex over the joined ids when all are canonical UUIDs."""
    if _UUID_LIST.fullmatch(",".join([e.event_id for e in events])):
        return [(e.event_id, e) for e in events]
    return _keyed(events)


async def record_batch_ids(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    """The after statement (topic/source as text[]), ids checked by one regex per batch."""
    keyed = _keyed_batch(events)
    await db.execute(
        _INSERT + "SELECT $1, * FROM unnest(string_to_array($2, ',')::uuid[], $3::text[], "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ','), "
        "$7::text[]) " + _ON_CONFLICT,
        group,
        ",".join([key for key, _ in keyed]),
        [e.topic for _, e in keyed],
        ",".join([str(e.partition) for _, e in keyed]),
        ",".join([str(e.offset) for _, e in keyed]),
        ",".join([e.outcome for _, e in keyed]),
        [e.source for _, e in keyed],
    )


async def record_values_array(
    db: Any, group: str, events: Sequence[store.Processed], *, batch_ids: bool = False
) -> None:
    """Distinct topic/source values as one small text[]; per row, its indexes comma-joined."""
    keyed = _keyed_batch(events) if batch_ids else _keyed(events)
    values: dict[str, int] = {}
    topics = [str(values.setdefault(e.topic, len(values) + 1)) for _, e in keyed]
    sources = [str(values.setdefault(e.source, len(values) + 1)) for _, e in keyed]
    await db.execute(
        _INSERT + "SELECT $1, r.id, ($7::text[])[r.t], r.p, r.o, r.c, ($7::text[])[r.s] "
        "FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($3, ',')::integer[], "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ','), "
        "string_to_array($8, ',')::integer[]) AS r(id, t, p, o, c, s) " + _ON_CONFLICT,
        group,
        ",".join([key for key, _ in keyed]),
        ",".join(topics),
        ",".join([str(e.partition) for _, e in keyed]),
        ",".join([str(e.offset) for _, e in keyed]),
        ",".join([e.outcome for _, e in keyed]),
        list(values),
        ",".join(sources),
    )


async def record_values_batch_ids(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    await record_values_array(db, group, events, batch_ids=True)


async def finished_batch_ids(db: Any, group: str, events: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """store.finished() with one regex per batch instead of row_id() per id, and a dict of
    id -> source built in C; any other batch (non-UUID ids, an id twice) takes store.finished()."""
    if not events:
        return {}
    joined = ",".join([i for i, _ in events])
    sources = dict(events)
    if len(sources) != len(events) or not _UUID_LIST.fullmatch(joined):
        return await store.finished(db, group, events)
    rows = await db.fetch(
        "SELECT event_id::text, source, outcome FROM processed_events "
        "WHERE event_id = ANY(string_to_array($2, ',')::uuid[]) AND consumer_group = $1",
        group,
        joined,
    )
    found: dict[tuple[str, str], str] = {}
    for key, source, outcome in rows:
        wanted = sources.get(key)
        if wanted is not None and (source == "" or source == wanted) and found.get((key, wanted)) != "handled":
            found[(key, wanted)] = outcome
    return found


async def record_json(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    """Every row as one JSON array of arrays (orjson), unpacked by json_array_elements."""
    keyed = _keyed(events)
    await db.execute(
        _INSERT + "SELECT $1, (r->>0)::uuid, r->>1, (r->>2)::integer, (r->>3)::bigint, r->>4, r->>5 "
        "FROM json_array_elements($2::text::json) AS r " + _ON_CONFLICT,
        group,
        orjson.dumps([(key, e.topic, e.partition, e.offset, e.outcome, e.source) for key, e in keyed]).decode(),
    )


async def record_json_text(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    """Ids, partitions, offsets and outcomes comma-joined; topic and source as JSON string arrays."""
    keyed = _keyed(events)
    await db.execute(
        _INSERT + "SELECT $1, * FROM unnest(string_to_array($2, ',')::uuid[], "
        "ARRAY(SELECT json_array_elements_text($3::text::json)), "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ','), "
        "ARRAY(SELECT json_array_elements_text($7::text::json))) " + _ON_CONFLICT,
        group,
        ",".join([key for key, _ in keyed]),
        orjson.dumps([e.topic for _, e in keyed]).decode(),
        ",".join([str(e.partition) for _, e in keyed]),
        ",".join([str(e.offset) for _, e in keyed]),
        ",".join([e.outcome for _, e in keyed]),
        orjson.dumps([e.source for _, e in keyed]).decode(),
    )


async def _stage_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS processed_stage (event_id uuid, topic text, partition integer, "
        '"offset" bigint, outcome text, source text) ON COMMIT DELETE ROWS'
    )


async def record_copy(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    """Binary COPY into a temporary table, then one INSERT … SELECT, in one transaction."""
    keyed = _keyed(events)
    async with db.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "processed_stage",
            records=[(uuid.UUID(key), e.topic, e.partition, e.offset, e.outcome, e.source) for key, e in keyed],
        )
        await conn.execute(
            _INSERT + 'SELECT $1, event_id, topic, partition, "offset", outcome, source FROM processed_stage '
            + _ON_CONFLICT,
            group,
        )


async def record_joined(db: Any, group: str, events: Sequence[store.Processed]) -> None:
    """DIAGNOSTIC ONLY (topic/source comma-joined: a comma in a source would split it):
    the after schema with the before statement's parameter style."""
    keyed = _keyed(events)
    await db.execute(
        _INSERT + "SELECT $1, * FROM unnest(string_to_array($2, ',')::uuid[], string_to_array($3, ','), "
        "string_to_array($4, ',')::integer[], string_to_array($5, ',')::bigint[], string_to_array($6, ','), "
        "string_to_array($7, ',')) " + _ON_CONFLICT,
        group,
        ",".join([key for key, _ in keyed]),
        ",".join([e.topic for _, e in keyed]),
        ",".join([str(e.partition) for _, e in keyed]),
        ",".join([str(e.offset) for _, e in keyed]),
        ",".join([e.outcome for _, e in keyed]),
        ",".join([e.source for _, e in keyed]),
    )


async def finished_sql_only(db: Any, group: str, events: Sequence[tuple[str, str]]) -> object:
    """DIAGNOSTIC: the after lookup statement without row_id() and the Python-side matching."""
    return await db.fetch(
        "SELECT event_id::text, source, outcome FROM processed_events "
        "WHERE event_id = ANY(string_to_array($2, ',')::uuid[]) AND consumer_group = $1",
        group,
        ",".join([i for i, _ in events]),
    )


@dataclass
class Version:
    name: str
    module: ModuleType | None  # None: the after module's schema (a variant)
    record: RecordFn
    finished: FinishedFn
    with_source: bool
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    url: str = ""
    pool: Any = None


VARIANTS: list[tuple[str, RecordFn, FinishedFn, Callable[[asyncpg.Connection], Awaitable[None]] | None]] = [
    ("after, ids checked per batch (record: text[] as now)", record_batch_ids, finished_batch_ids, None),
    ("after, ids per batch + distinct topic/source text[]", record_values_batch_ids, finished_batch_ids, None),
    ("after, record: distinct topic/source text[] + indexes", record_values_array, store.finished, None),
    ("after, record: one json parameter (orjson)", record_json, store.finished, None),
    ("after, record: topic/source as json string arrays", record_json_text, store.finished, None),
    ("after, record: COPY into temp table + INSERT", record_copy, store.finished, _stage_table),
    ("diagnostic: after schema, all comma-joined; finished SQL only", record_joined, finished_sql_only, None),
]


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
    if v.module is not None and not v.with_source:
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
            assert v.module is not None
            names.append(await create_database(server_url))
            v.url = database_url(server_url, names[-1])
            await prepare(v.url, v.module, args.rows, v.with_source)
        if args.variants:  # copies of the after database, made before anything else touched it
            for label, record_fn, finished_fn, init in VARIANTS:
                names.append(await create_database(server_url, template=names[1]))
                versions.append(Version(label, None, record_fn, finished_fn, True, init,
                                        database_url(server_url, names[-1])))
        print(f"store benchmark: {args.rows:,} rows pre-filled per database in "
              f"{time.perf_counter() - started:.0f} s; {args.batches} batches of {BATCH} per measure, "
              f"median of {args.rounds} rounds", flush=True)
        # The same existing ids for every version: the pre-fill differs, so sample each one.
        existing = {v.name: await sample_existing(v.url, args.batches * BATCH // 2) for v in versions}
        if min(len(ids) for ids in existing.values()) < BATCH // 2:
            raise SystemExit(f"--rows {args.rows} leaves fewer than {BATCH // 2} rows of {GROUP} to look up")
        for v in versions:
            v.pool = await asyncpg.create_pool(v.url, min_size=2, max_size=2, init=v.init)
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
    parser.add_argument("--variants", action="store_true", help="also time candidate designs (VARIANTS)")
    parser.add_argument("--found", type=float, default=0.5,
                        help="share of a lookup batch's ids that exist (0: steady state, 0.5: after a crash)")
    args = parser.parse_known_args()[0]  # (run.py passes every benchmark the same arguments)
    FOUND[0] = round(BATCH * args.found)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
