"""``eventq consume --workers N``: the consumer benchmark's scenario run through the CLI, N = 1 and 2.

Run by ``benchmarks/consumer.py`` as its ``cli-1`` and ``cli-2`` scenarios, on the same
topic (6 partitions, N events) as the in-process eventq scenario, each round on a
fresh group::

    python -m eventq.cli --log-level WARNING consume cli_app:app --group G --topic T \\
        --until-idle --workers N --bootstrap-servers … --database-url …

``cli_app`` (benchmarks/cli_app.py) is a no-op handler that, in every daemon process,
notes the first and last handler call on the host's monotonic clock and the process's
own peak RSS (VmHWM) at exit. *steady* is the first handler call in any worker to the
last in any worker; *wall* is starting the command to its exit (interpreter start-up
and imports, ~1 s, included: a second worker's start-up and group join overlap the
first's). Peak RSS is the largest daemon process's VmHWM (for N = 2 the supervisor,
which runs no daemon, is not counted; its own peak is reported as ``supervisor_mib``).
Afterwards the group must have exactly N rows in processed_events, whatever a
rebalance redelivered.

With ``--workers 2`` each worker also serves a health port (``--health-port 0``, as the
supervisor requires), which the single daemon does not. Kafka, PostgreSQL and the
workers share the machine's cores (two on the benchmark VM), so a second worker adds
a consumer process, not a core: the ratio says what a second process buys when the
broker and the database are already taking their share.

    python benchmarks/workers.py [--events 100000] [--repeat 3]   (consumer.py with raw, eventq, cli-1, cli-2)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
SCENARIOS = {"cli-1": 1, "cli-2": 2}


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _rows(database_url: str, group: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer_group = $1", group)
        return count
    finally:
        await conn.close()


def run_cli(args: argparse.Namespace, scenario: str, topic: str, database_url: str) -> dict[str, Any]:
    """One round of ``scenario`` (cli-1 or cli-2); the same keys as consumer.py's child results."""
    workers = SCENARIOS[scenario]
    group = f"{topic}-{scenario}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="eventq-bench-cli-") as folder, \
            tempfile.TemporaryFile("w+") as stderr:
        env = {**os.environ, "EVENTQ_BENCH_CLOCK_DIR": folder,
               "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
        command = [
            sys.executable, "-m", "eventq.cli", "--log-level", "WARNING", "consume", "cli_app:app",
            "--group", group, "--topic", topic, "--until-idle", "--workers", str(workers),
            "--bootstrap-servers", args.bootstrap_servers, "--database-url", database_url,
        ]
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        supervisor: list[float] = []
        if workers > 1:  # the supervisor's own peak, read until it exits (VmHWM only grows)
            def watch() -> None:
                while process.poll() is None:
                    if (mib := _vm_hwm_mib(process.pid)) is not None:
                        supervisor.append(mib)
                    time.sleep(0.2)
            threading.Thread(target=watch, daemon=True).start()
        try:
            code = process.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        ended = time.monotonic()
        clocks = [json.loads(p.read_text()) for p in Path(folder).glob("*.json")]
        stderr.seek(0)
        errors = stderr.read()
    rows = asyncio.run(_rows(database_url, group))
    handled = sum(c["events"] for c in clocks)
    first = min((c["first"] for c in clocks), default=0.0)
    last = max((c["last"] for c in clocks), default=0.0)
    failed = code != 0 or rows != args.events or len(clocks) > workers
    if failed:
        print(f"{scenario}: exit {code}, {rows} rows of {args.events}, {handled} handled in {len(clocks)} "
              f"processes\n{errors[-4000:]}", file=sys.stderr)
    return {
        "events": rows,
        "rows": rows,
        "handled": handled,
        "wall": rows / (ended - started),
        "steady": rows / (last - first) if last > first else float("nan"),
        "to_first_s": first - started if first else float("nan"),
        "rss_mib": max((c["rss_mib"] for c in clocks), default=float("nan")),
        "daemons_mib": sorted(c["rss_mib"] for c in clocks),
        "supervisor_mib": max(supervisor, default=None),
        "failed": failed,
    }


def main() -> int:
    """consumer.py with the scenarios this module adds and their baselines."""
    argv = [a for a in sys.argv[1:] if not a.startswith("--scenarios")]
    command = [sys.executable, str(HERE / "consumer.py"), *argv, "--scenarios", "raw,eventq,cli-1,cli-2"]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
