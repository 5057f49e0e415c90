"""One consumer daemon of the fault suite, run as its own OS process by the harness.

Usage: python -m tests.faults.worker   (settings from EVENTQ_* variables, like ``eventq consume``)

* Its handler appends ``(event_id, attempt, pid)`` to ``side_effects`` (autocommitted)
  before returning, so every handler run that got that far is counted.
* Poison events (``data.poison``) fail every attempt until the file ``FAULT_FIX_FILE``
  exists ("the fix is deployed"); then they are handled like the rest.
* ``FAULT_CRASH=POINT:K`` makes the process ``os._exit(137)`` (as kill -9 would) the K-th
  time a slice reaches POINT (after_handlers, after_record or before_commit), first
  appending ``pid POINT unix-time`` to ``FAULT_CRASH_LOG``.
* SIGTERM/SIGINT stop it gracefully, as they stop ``eventq consume``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from eventq.consumers import App, Consumer, ConsumerSettings, Context
from eventq.schemas import Event
from eventq.telemetry.logs import configure_logging
from tests.crashpoints import CrashAt
from tests.faults.workload import EVENT_TYPE


class PoisonError(Exception):
    """What a poison event's handler raises until the fix is deployed."""


def build_app(group: str, topic: str, fix_file: Path | None) -> App:
    """The suite's app: one handler that records its side effect (poison fails until fixed)."""
    app = App(group, topics=[topic])
    pid = os.getpid()

    @app.handler(EVENT_TYPE)
    async def record_effect(event: Event, ctx: Context) -> None:
        if event.data.get("poison") and (fix_file is None or not fix_file.exists()):
            raise PoisonError(f"poison event {event.id} (key {event.key}, seq {event.data['seq']})")
        await ctx.db.execute(
            "INSERT INTO side_effects (event_id, attempt, pid) VALUES ($1, $2, $3)", event.id, ctx.attempt, pid
        )

    return app


async def main() -> None:
    settings = ConsumerSettings.from_env()
    assert settings.group_id is not None and len(settings.topics) == 1
    fix = os.environ.get("FAULT_FIX_FILE")
    crash = os.environ.get("FAULT_CRASH")
    crash_log = os.environ.get("FAULT_CRASH_LOG")
    app = build_app(settings.group_id, settings.topics[0], Path(fix) if fix else None)
    crash_points = CrashAt(crash, Path(crash_log) if crash_log else None) if crash else None
    daemon = Consumer(app, settings, instruments=crash_points)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    await daemon.run()


if __name__ == "__main__":
    configure_logging(json_logs=True)
    asyncio.run(main())
