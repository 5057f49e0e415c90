"""The fault matrix's report: one table row per fault, printed and saved as Markdown."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

from tests.faults.harness import Result

PROPERTIES = ("applied", "daemons", "P1 no loss", "P2 one record", "P3 side effects", "P4 lag 0", "P5 key order",
              "P6 dead-lettered", "P6 replayed once", "P6 2nd replay no-op", "P7 on topic", "P8 no rollback",
              "P9 outbox empty", "run", "heal")  # fmt: skip
"""Every verdict a run can have, in table order; "run" and "heal" appear only when they failed, P7–P9 only
for the outbox rows."""


def render(results: Sequence[Result], *, command: str) -> str:
    """Markdown: a summary table (pass/fail per property), then each fault's figures and actions."""
    optional = ("P7 on topic", "P8 no rollback", "P9 outbox empty", "run", "heal")
    shown = [p for p in PROPERTIES if p not in optional or any(p in r.verdicts for r in results)]
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({platform.machine()}, Python {platform.python_version()}): `{command}`",
        "",
        "| fault | events | seed | " + " | ".join(p.split(" ", 1)[0] for p in shown) + " | drain s | run s |",
        "|---|---:|---:|" + "---|" * len(shown) + "---:|---:|",
    ]
    for r in results:
        marks = " | ".join(("pass" if r.verdicts[p].ok else "**FAIL**") if p in r.verdicts else "-" for p in shown)
        lines.append(
            f"| {r.fault.name} {r.fault.title} | {r.events} | {r.seed} | {marks} | {r.drain_s:.1f} | {r.seconds:.0f} |"
        )
    for r in results:
        lines += ["", f"### {r.fault.name}: {r.fault.title}", ""]
        lines += [f"- {p}: {r.verdicts[p].figure}" for p in PROPERTIES if p in r.verdicts]
        died = ", ".join(f"{how} {n}" for how, n in sorted(r.deaths.items())) or "none"
        source = f"relays started {r.relays_started}" if r.fault.relays else f"publisher re-sent {r.resent}"
        lines.append(f"- workers started {r.workers_started}; died: {died}; {source}")
        lines += [f"- {fact}" for fact in r.facts]
        if r.actions:
            lines.append(
                f"- actions ({len(r.actions)}): " + "; ".join(r.actions[:12]) + (" …" if len(r.actions) > 12 else "")
            )
        if not r.ok:
            lines += ["", "```", r.failures(), "```"]
    return "\n".join(lines) + "\n"


def save(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
