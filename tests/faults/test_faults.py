"""The CI subset of the fault matrix: baseline, F1, F4, F6, F7 and O1 at a reduced size.

Each test runs one fault against a real broker, PostgreSQL and three daemon processes and
proves P1–P6 hold (see docs/faults.md), and for O1 (relay kill -9 mid-round) P7–P9 of the
outbox too; a failure names the seed and the event ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import CI_EVENTS, RESULTS, SEED
from tests.faults.faults import FAULTS
from tests.faults.harness import run_fault
from tests.faults.stack import Services

# Not marked kafka/postgres: the suite starts a broker and a PostgreSQL cluster of its own.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.mark.timeout(900)  # a run bounds its own waits (drain 120 s, replay 180 s); this is the backstop
@pytest.mark.parametrize("name", ["baseline", "F1", "F4", "F6", "F7", "O1"])
async def test_fault_keeps_every_guarantee(name: str, services: Services, tmp_path: Path) -> None:
    """Under the fault, acked events are recorded once or dead-lettered, duplicates come only from crash windows."""
    result = await run_fault(FAULTS[name], services, seed=SEED, events=CI_EVENTS, home=tmp_path)
    RESULTS.append(result)
    assert result.ok, result.failures()
