"""Run the benchmarks against the local stack (`make bench`); arguments go to each one.

    python benchmarks/run.py [NAME ...] [--events N] [--repeat R]

NAME selects benchmarks (default: all, in this order): producer, consumer, spans, store,
latency, stages, outbox, testkit; and consumer.py's added scenarios with their baselines, faststream (FastStream
batch subscriber against raw aiokafka and eventq) and workers (``eventq consume
--workers 1`` and ``2``, peak RSS per daemon process). Figures taken while other work
shares the machine are noisy: repeat, and say so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS: dict[str, list[str]] = {
    "producer": ["producer.py"],
    "consumer": ["consumer.py"],  # every scenario, faststream and the CLI's included
    "spans": ["spans.py"],
    "store": ["store.py"],
    "latency": ["latency.py"],
    "stages": ["stages.py"],
    "outbox": ["outbox.py"],  # adding in a transaction, relay throughput, commit -> handler latency
    "testkit": ["testkit.py"],  # eventq.testing: one test, events/s; against FastStream's TestKafkaBroker
}
SUBSETS: dict[str, list[str]] = {  # selectable on their own; `make bench` runs them inside consumer
    "faststream": ["consumer.py", "--scenarios", "raw,eventq,faststream"],
    "workers": ["consumer.py", "--scenarios", "raw,eventq,cli-1,cli-2"],
}


def main() -> int:
    here = Path(__file__).resolve().parent
    names = [a for a in sys.argv[1:] if not a.startswith("-") and a in BENCHMARKS | SUBSETS]
    options = [a for a in sys.argv[1:] if a not in names]
    unknown = [a for a in options if not a.startswith("-") and not a.replace(".", "").isdigit()]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS | SUBSETS)}",
              file=sys.stderr)
        return 2
    status = 0
    for name in names or list(BENCHMARKS):
        script, *extra = (BENCHMARKS | SUBSETS)[name]
        print(f"== {name} ({script}{' ' if extra else ''}{' '.join(extra)})", flush=True)
        status |= subprocess.call([sys.executable, str(here / script), *options, *extra])
    return status


if __name__ == "__main__":
    sys.exit(main())
