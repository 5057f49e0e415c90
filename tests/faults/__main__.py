"""Run the fault matrix: ``python -m tests.faults [--events N] [--seed S] [--only F1,F4] [--report FILE]``.

Starts a Kafka broker and a PostgreSQL cluster of its own (plus a three-node cluster for
F5), runs each fault, prints the report and saves it (default ``.eventq/faults/report.md``).
Exit 1 if any property failed; the failures name the seed and the offending event ids.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.faults.faults import FAULTS
from tests.faults.harness import Result, run_fault
from tests.faults.report import render, save
from tests.faults.stack import Services


async def run_matrix(names: list[str], *, seed: int, events: int, home: Path, publish_s: float) -> list[Result]:
    results: list[Result] = []
    single: Services | None = None
    try:
        for name in names:
            fault = FAULTS[name]
            services = Services(home / "cluster", nodes=3) if fault.nodes > 1 else single
            if services is None:
                services = single = Services(home / "single")
            await services.start()
            try:
                print(f"== {name}: {fault.title} ({events} events, seed {seed})", flush=True)
                result = await run_fault(
                    fault, services, seed=seed, events=events, home=home / "runs", publish_s=publish_s
                )
                results.append(result)
                status = "ok" if result.ok else "FAILED\n" + result.failures()
                print(f"   {status} in {result.seconds:.0f} s", flush=True)
            finally:
                if services is not single:
                    await services.discard()
    finally:
        if single is not None:
            await single.discard()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument(
        "--publish-seconds",
        type=float,
        default=30.0,
        help="spread publishing over this long; faults are injected meanwhile and 4 s more",
    )
    parser.add_argument("--only", default=",".join(FAULTS), help="comma-separated faults (default: all)")
    parser.add_argument("--report", type=Path, default=Path(".eventq/faults/report.md"))
    parser.add_argument("--keep", action="store_true", help="keep the run folder (worker logs, Kafka data) afterwards")
    args = parser.parse_args(argv)
    # The harness's own clients see every outage it causes; their reconnect noise is not news.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    home = Path(tempfile.mkdtemp(prefix="eventq-faults-", dir=".eventq" if Path(".eventq").is_dir() else None))
    command = " ".join(["python -m tests.faults", *(argv if argv is not None else sys.argv[1:])])
    try:
        results = asyncio.run(
            run_matrix(names, seed=seed, events=args.events, home=home.resolve(), publish_s=args.publish_seconds)
        )
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    text = render(results, command=command if "--seed" in command else f"{command} --seed {seed}")
    print(text)
    save(text, args.report)
    print(f"report saved to {args.report}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
