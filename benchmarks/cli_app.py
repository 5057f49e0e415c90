"""The App that ``benchmarks/workers.py`` runs through ``eventq consume cli_app:app``.

A no-op handler for ``demo.order.created.v1`` (group and topic come from the command
line). When :data:`CLOCK_DIR_ENV` names a folder, each daemon process writes
``<pid>.json`` there as it exits: events handled, ``time.monotonic()`` at the first and
the last handler call (one clock for every process on a Linux host) and its own peak
RSS (VmHWM, which starts afresh at exec, unlike ``ru_maxrss``).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from eventq.consumers import App, Context
from eventq.schemas import Event
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS

CLOCK_DIR_ENV = "EVENTQ_BENCH_CLOCK_DIR"

app = App("bench-cli", schemas=DEMO_SCHEMAS)
_clock = {"events": 0, "first": 0.0, "last": 0.0}


@app.handler("demo.order.created.v1")
async def handle(event: Event, ctx: Context) -> None:
    now = time.monotonic()
    _clock["events"] += 1
    _clock["last"] = now
    if not _clock["first"]:
        _clock["first"] = now


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _write_clock() -> None:
    folder = os.environ.get(CLOCK_DIR_ENV)
    if folder and _clock["events"]:
        (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps({**_clock, "rss_mib": _vm_hwm_mib()}))


atexit.register(_write_clock)
