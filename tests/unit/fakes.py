"""Small stand-ins shared by unit tests (pure logic only; delivery is tested against real Kafka)."""

from __future__ import annotations

from eventq.testing.broker import Record  # the fields of an aiokafka ConsumerRecord that eventq reads

__all__ = ["Record"]
