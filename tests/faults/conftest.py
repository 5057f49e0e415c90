"""Fixtures of the CI fault subset: one broker and PostgreSQL cluster of its own for the
module, and the report table printed at the end of the test session and saved."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.faults.harness import Result
from tests.faults.report import render, save
from tests.faults.stack import Services

CI_EVENTS = int(os.environ.get("EVENTQ_FAULT_EVENTS", "2000"))
"""Events per fault in the CI subset (the full matrix uses 20,000)."""

SEED = int(os.environ.get("EVENTQ_FAULT_SEED") or random.randrange(1_000_000))
"""One seed per session (EVENTQ_FAULT_SEED repeats a run); failures print it."""

REPORT = Path(".eventq/faults/ci-report.md")
RESULTS: list[Result] = []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    """A single-node Kafka and a PostgreSQL cluster that the faults may kill and restart."""
    stack = Services(tmp_path_factory.mktemp("faults-stack"))
    await stack.start()
    try:
        yield stack
    finally:
        await stack.discard()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        text = render(RESULTS, command=f"EVENTQ_FAULT_SEED={SEED} pytest tests/faults (events {CI_EVENTS})")
        save(text, REPORT)
        terminalreporter.write_sep("=", "fault-injection report")
        terminalreporter.write(text.split("\n### ")[0] + f"\n(saved with details to {REPORT})\n")
