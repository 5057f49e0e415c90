"""Consumer instruments that end the process like kill -9 (``os._exit(137)``) at a crash point.

Shared by the crash tests (tests/integration/crash_worker.py) and the fault suite's
daemons (tests/faults/worker.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from eventq.consumers import Instruments
from eventq.consumers.outcome import Slice


class CrashAt(Instruments):
    """Exit like kill -9 the K-th time a slice reaches a crash point.

    ``spec`` is ``POINT`` or ``POINT:K`` (POINT: after_handlers, after_record or
    before_commit; K defaults to 1). With ``log``, ``pid POINT unix-time`` is appended to
    that file first, so whoever watches the process knows why and when it died.
    """

    def __init__(self, spec: str, log: Path | None = None) -> None:
        point, _, count = spec.partition(":")
        self.point = point
        self.left = int(count or 1)
        self.log = log

    def _maybe(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left > 0:
            return
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {point} {time.time():.6f}\n")
        os._exit(137)

    async def after_handlers(self, sl: Slice) -> None:
        self._maybe("after_handlers")

    async def after_record(self, sl: Slice) -> None:
        self._maybe("after_record")

    async def before_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._maybe("before_commit")
