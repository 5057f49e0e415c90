"""Run every benchmark against the local stack (`make bench`); arguments go to each one.

    python benchmarks/run.py [--events N] [--repeat R]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ["producer.py", "consumer.py", "spans.py", "store.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    status = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        status |= subprocess.call([sys.executable, str(here / name), *sys.argv[1:]])
    return status


if __name__ == "__main__":
    sys.exit(main())
