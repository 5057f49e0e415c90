"""Extension points of the consumer daemon: a base class with no-op hooks.

Subclass :class:`Hooks` and pass an instance to :class:`~eventq.consumers.Consumer`
to observe (or, in tests, interrupt) the three steps of every partition slice:
handlers ran → rows recorded → offsets committed. A hook that raises makes the
slice fail before the next step, exactly like a crash at that point: nothing after
it happens, so the records are delivered again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Hooks:
    """No-op hooks; override the ones you need."""

    async def after_handlers(self, topic: str, partition: int, result: Any) -> None:
        """Handlers of a slice finished; nothing recorded or dead-lettered yet."""

    async def after_record(self, topic: str, partition: int, result: Any) -> None:
        """Dead letters acknowledged and rows recorded; the offset is not committed yet."""

    async def before_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """About to commit these next-offsets, keyed by (topic, partition)."""
