"""Bounded acknowledgement waits (the guard against aiokafka's never-expiring idempotent batches)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import errors as ke

from eventq.producers.deadlines import AckDeadlines


async def test_unanswered_future_times_out_at_its_deadline() -> None:
    """A future nobody completes fails the wait with KafkaTimeoutError once its deadline passes."""
    acks = AckDeadlines(0.2)
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with pytest.raises(ke.KafkaTimeoutError):
        await acks.wait(never, acks.deadline())
    never.set_exception(ke.KafkaConnectionError())  # a late answer is dropped quietly
    await acks.close()


async def test_answers_are_relayed_while_others_still_wait() -> None:
    """Results and errors reach their own waiters, whatever the order they complete in."""
    acks = AckDeadlines(5)
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    waiting = [asyncio.ensure_future(acks.wait(f, acks.deadline())) for f in (first, second)]
    await asyncio.sleep(0)
    second.set_result(42)
    first.set_exception(ke.NotLeaderForPartitionError())
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[0], ke.NotLeaderForPartitionError) and results[1] == 42
    await acks.close()
