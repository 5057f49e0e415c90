"""The properties P1–P6, computed from what the run left behind: processed_events rows,
side_effects, the source topic and its dead-letter topic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from eventq.config import KafkaSettings
from eventq.dlq.letters import Letter, scan
from eventq.wire import H_ID
from tests.conftest import read_to_end
from tests.faults.stack import Death
from tests.faults.workload import Workload


@dataclass(frozen=True)
class Effect:
    event_id: str
    attempt: int
    pid: int
    serial: int
    at: float


@dataclass(frozen=True)
class Snapshot:
    """The database's view of one consumer group after draining."""

    rows: dict[str, tuple[str, float]]  # event id -> (outcome, processed_at unix time)
    effects: dict[str, list[Effect]]  # event id -> its side effects in insert order

    @classmethod
    async def take(cls, database: str, group: str) -> Snapshot:
        conn = await asyncpg.connect(database)
        try:
            rows = await conn.fetch(
                "SELECT event_id::text AS id, outcome, extract(epoch FROM processed_at)::float8 AS at "
                "FROM processed_events WHERE consumer_group = $1",
                group,
            )
            effects = await conn.fetch(
                "SELECT event_id::text AS id, attempt, pid, serial, extract(epoch FROM at)::float8 AS at "
                "FROM side_effects ORDER BY serial"
            )
        finally:
            await conn.close()
        by_event: dict[str, list[Effect]] = {}
        for e in effects:
            by_event.setdefault(e["id"], []).append(Effect(e["id"], e["attempt"], e["pid"], e["serial"], e["at"]))
        return cls(rows={r["id"]: (r["outcome"], r["at"]) for r in rows}, effects=by_event)


@dataclass(frozen=True)
class Original:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


async def read_source(kafka: KafkaSettings, topic: str, copies: Counter[str] | None = None) -> dict[str, Original]:
    """The first copy of every event in the source topic, by event id (from its ``ce_id`` header).

    ``copies``, if given, gets every copy counted by event id.
    """
    found: dict[str, Original] = {}
    for r in await read_to_end(kafka, topic, timeout=120):
        headers = tuple(r.headers or ())
        event_id = dict(headers).get(H_ID)
        if event_id is not None:
            found.setdefault(event_id.decode(), Original(r.key, r.value, headers))
            if copies is not None:
                copies[event_id.decode()] += 1
    return found


async def read_letters(kafka: KafkaSettings, topic: str) -> list[Letter]:
    return [letter async for letter in scan(kafka, topic)]


@dataclass
class Verdict:
    """One property's outcome: a figure for the table and, if it failed, the offending ids."""

    ok: bool
    figure: str
    ids: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # one line per offending id, for the failure output


def no_loss(w: Workload, acked: set[str], snap: Snapshot, letters: list[Letter]) -> Verdict:
    """P1: every acknowledged event has a handled row or a dead letter; every malformed record a dead letter."""
    lettered = {letter.event_id for letter in letters if letter.event_id}
    # A dead_lettered row does not count by itself: its letter must be in the topic.
    done = {i for i, (outcome, _) in snap.rows.items() if outcome in ("handled", "skipped")}
    missing = sorted(i for i in acked if i not in done and i not in lettered)
    bad_values = {letter.value for letter in letters}
    malformed_missing = sum(1 for v in w.malformed if v not in bad_values)
    ok = not missing and not malformed_missing and len(acked) == len(w.events)
    lettered_bad = len(w.malformed) - malformed_missing
    figure = f"{len(acked) - len(missing)}/{len(acked)} acked accounted; "
    figure += f"malformed dead-lettered {lettered_bad}/{len(w.malformed)}"
    return Verdict(ok, figure, missing)


def one_record(w: Workload, snap: Snapshot) -> Verdict:
    """P2: exactly one row per event; a handled row only where the handler ran, and vice versa.

    The primary key (event id, group) already forbids a second row; what can fail here is
    a missing or unknown row, or rows and side effects that disagree.
    """
    ids = w.ids
    unknown = sorted(i for i in snap.rows if i not in ids)
    handled_without_effect = sorted(i for i, (o, _) in snap.rows.items() if o == "handled" and i not in snap.effects)
    effect_without_row = sorted(i for i in snap.effects if snap.rows.get(i, ("", 0.0))[0] != "handled")
    outcomes = Counter(o for o, _ in snap.rows.values())
    bad = unknown + handled_without_effect + effect_without_row
    figure = (
        f"{len(snap.rows)} rows for {len(ids)} events ({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})"
    )
    if bad:
        figure += f"; {len(handled_without_effect)} handled w/o effect, {len(effect_without_row)} effects w/o row"
    return Verdict(not bad and len(snap.rows) == len(ids), figure, bad)


def histogram(snap: Snapshot) -> Counter[int]:
    return Counter(len(v) for v in snap.effects.values())


def side_effects(
    snap: Snapshot,
    deaths: list[Death],
    paused: dict[int, tuple[float, float | None]],
    db_outages: list[tuple[float, float]],
) -> tuple[Verdict, Counter[str]]:
    """P3: every run after an event's first needs an excuse, a window that permits it.

    A later run is excused by an earlier run of the same event
    * in a worker that died (kill -9 or a crash point) before the later run and before the
      event's row was committed, the later run too coming before the row: the handler ran,
      the row did not, redelivery ran it again;
    * in the same worker during a PostgreSQL outage (±1 s), the later run before the row:
      the handler's insert may commit just as the connection breaks, and it runs again;
    or either run was in a paused worker (a zombie) from 10 s before its pause to 15 s
    after it resumed: it may finish what it had fetched after its partitions moved on.

    A run after the row was committed, without a zombie, is never excused: redelivery must
    skip a recorded event (a crash after the record or before the commit). Returns the
    verdict and the excused duplicates counted by window.
    """
    died = {d.pid: d for d in deaths if not d.how.startswith("exit")}
    zombie_windows = {pid: (start - 10.0, (end if end is not None else float("inf")) + 15.0)
                      for pid, (start, end) in paused.items()}  # fmt: skip

    def zombie(e: Effect) -> bool:
        window = zombie_windows.get(e.pid)
        return window is not None and window[0] <= e.at <= window[1]

    def excuse(earlier: Effect, later: Effect, row_at: float) -> str | None:
        if zombie(earlier) or zombie(later):
            return "zombie"
        if later.at >= row_at:
            return None
        death = died.get(earlier.pid)
        if death is not None and death.at <= later.at and death.at < row_at:
            return death.how if death.how in ("kill-9", "crash:after_handlers") else f"{death.how} (a slice in flight)"
        if earlier.pid == later.pid and any(a - 1.0 <= earlier.at <= b + 1.0 for a, b in db_outages):
            return "database outage"
        return None

    unexplained = []
    explained: Counter[str] = Counter()
    for event_id, effects in snap.effects.items():
        row_at = snap.rows.get(event_id, ("", float("inf")))[1]
        for j in range(1, len(effects)):
            reasons = [r for r in (excuse(effects[i], effects[j], row_at) for i in range(j)) if r is not None]
            if not reasons:
                unexplained.append(event_id)
                break
            explained[reasons[0]] += 1
    h = histogram(snap)
    why = ", ".join(f"{n} {w}" for w, n in sorted(explained.items()))
    figure = " ".join(f"{k}×:{h[k]}" for k in sorted(h)) + f"; extra runs excused {sum(explained.values())}"
    figure += f" ({why})" if why else ""
    figure += f", events with an unexcused run {len(unexplained)}"
    details = [
        f"{i}: row {snap.rows.get(i, ('none', 0.0))[0]} at {snap.rows.get(i, ('', 0.0))[1]:.3f}; runs "
        + ", ".join(
            f"pid {e.pid} attempt {e.attempt} at {e.at:.3f}"
            + (f" (pid died {died[e.pid].at:.3f})" if e.pid in died else "")
            for e in snap.effects[i]
        )
        for i in sorted(unexplained)[:20]
    ]
    return Verdict(not unexplained, figure, sorted(unexplained), details), explained


def key_order(w: Workload, snap: Snapshot) -> Verdict:
    """P5: per key, events were first processed in sequence order (poison events excluded)."""
    first = {i: e[0].serial for i, e in snap.effects.items()}
    last_by_key: dict[str, tuple[int, str]] = {}
    out_of_order = []
    for event in w.events:  # in per-key sequence order
        if event.id in w.poison or event.id not in first:
            continue
        key = event.key or ""
        previous = last_by_key.get(key)
        if previous is not None and first[event.id] < previous[0]:
            out_of_order.append(event.id)
        last_by_key[key] = (first[event.id], event.id)
    return Verdict(not out_of_order, f"{len(out_of_order)} out of order over {len(last_by_key)} keys", out_of_order)


def poison_dead_lettered(w: Workload, letters: list[Letter], source: dict[str, Original]) -> Verdict:
    """P6a: every poison event, and nothing else, was dead-lettered with its original key, value and headers."""
    by_event: dict[str, list[Letter]] = {}
    for letter in letters:
        if letter.event_id:
            by_event.setdefault(letter.event_id, []).append(letter)
    wrong = []
    for event_id in sorted(w.poison):
        original = source.get(event_id)
        copies = by_event.get(event_id, [])
        if original is None or not any(
            c.key == original.key and c.value == original.value and set(original.headers) <= set(c.original_headers())
            for c in copies
        ):
            wrong.append(event_id)
    healthy = sorted(set(by_event) - w.poison)  # an outage must not dead-letter a healthy event
    figure = (
        f"{len(w.poison) - len(wrong)}/{len(w.poison)} with original bytes; healthy events dead-lettered {len(healthy)}"
    )
    return Verdict(not wrong and not healthy, figure, wrong + healthy)


def replayed_once(w: Workload, snap: Snapshot) -> Verdict:
    """P6b: after the replay each poison event was handled exactly once."""
    wrong = sorted(
        i for i in w.poison if len(snap.effects.get(i, [])) != 1 or snap.rows.get(i, ("", 0.0))[0] != "handled"
    )
    return Verdict(not wrong, f"{len(w.poison) - len(wrong)}/{len(w.poison)} handled once", wrong)


def unchanged(before: Snapshot, after: Snapshot) -> Verdict:
    """P6c: a second replay changed no row and ran no handler."""
    changed = sorted(
        {i for i in after.effects if len(after.effects[i]) != len(before.effects.get(i, []))}
        | {i for i in after.rows if after.rows[i][0] != before.rows.get(i, ("", 0.0))[0]}
    )
    return Verdict(not changed, f"{len(changed)} changed", changed)


def on_topic(committed: set[str], rolled_back: set[str], copies: Counter[str]) -> Verdict:
    """P7: every committed outbox event is in the topic at least once, and nothing unknown is.

    A second copy is allowed: a relay that dies between the broker's ack and deleting the
    row publishes it again (consumers drop it by event id; P2 and P3 check they did).
    """
    missing = sorted(i for i in committed if not copies[i])
    unknown = sorted(i for i in copies if i not in committed and i not in rolled_back)
    hist = Counter(copies[i] for i in committed if copies[i])
    figure = f"{len(committed) - len(missing)}/{len(committed)} committed events in the topic; copies "
    figure += " ".join(f"{k}×:{hist[k]}" for k in sorted(hist))
    if unknown:
        figure += f"; {len(unknown)} unknown ids"
    return Verdict(not missing and not unknown, figure, missing + unknown)


def none_rolled_back(rolled_back: set[str], committed: set[str], copies: Counter[str], snap: Snapshot) -> Verdict:
    """P8: no event added in a transaction that rolled back was committed, published or handled."""
    leaked = sorted(i for i in rolled_back if i in committed or copies[i] or i in snap.rows or i in snap.effects)
    where = Counter(
        place
        for i in leaked
        for place, hit in (("committed", i in committed), ("in the topic", copies[i] > 0),
                           ("recorded", i in snap.rows), ("handled", i in snap.effects))  # fmt: skip
        if hit
    )
    figure = f"{len(leaked)} of {len(rolled_back)} rolled-back events seen"
    figure += f" ({', '.join(f'{n} {w}' for w, n in where.items())})" if leaked else " anywhere"
    return Verdict(not leaked, figure, leaked)
