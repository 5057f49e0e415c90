"""The README's code blocks that name a file (``# examples/billing.py``) are excerpts of that file, verbatim,
so the examples the README shows are the ones the suite runs and type-checks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n# ((?:examples|tests)/[\w/]+\.py)\n(.*?)```", re.S)


def test_named_readme_blocks_are_excerpts_of_their_files() -> None:
    """Each README block headed by a file name appears, line for line, in that file (and there are such blocks)."""
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert {name for name, _ in blocks} >= {"examples/billing.py", "tests/unit/test_billing_kit.py"}
    for name, body in blocks:
        assert body in (ROOT / name).read_text(), f"README's block for {name} is not an excerpt of that file"
