"""Small stand-ins shared by unit tests (pure logic only; delivery is tested against real Kafka)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Record(NamedTuple):
    """The fields of an aiokafka ConsumerRecord that eventq reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]  # read-only here, so a list of (str, bytes) fits too
