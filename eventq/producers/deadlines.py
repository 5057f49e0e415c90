"""Bounded waits for broker acknowledgements, without a timer per wait.

aiokafka never expires the batches of an idempotent producer: it retries until the
broker answers, so an unguarded ``await`` on a send future can wait forever while the
broker is down. ``asyncio.wait_for`` would bound it, but costs a timer handle per
event (measured: a third of the CPU of concurrent ``publish`` calls). Here every
wait gets the same timeout, so deadlines arrive (nearly) in order and one watchdog
task, checking the oldest wait, serves them all. A wait queued behind a later
deadline times out late by at most that difference (the time between computing its
deadline and starting to wait: encoding one ``publish_many`` call).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiokafka import errors as ke

_MAX_NAP_S = 0.5  # how often the watchdog drops acknowledged waits from its queue


class AckDeadlines:
    """Waits on aiokafka futures, failing each with KafkaTimeoutError after ``timeout_s``.

    A future that times out here may still be completed by aiokafka later (the record
    may be written after all); that late result is consumed and dropped.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waits: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._watchdog: asyncio.Task[None] | None = None

    def deadline(self) -> float:
        """The loop time at which a wait starting now gives up."""
        return asyncio.get_running_loop().time() + self.timeout_s

    async def wait(self, future: asyncio.Future[Any], deadline: float) -> Any:
        """The future's result, or KafkaTimeoutError once ``deadline`` has passed."""
        if future.done():
            return future.result()
        loop = asyncio.get_running_loop()
        relay: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(lambda done: _relay(done, relay))
        self._waits.append((deadline, relay))
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = loop.create_task(self._watch())
        return await relay

    async def close(self) -> None:
        """Stop the watchdog; call after every awaited future has resolved."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
            self._watchdog = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        waits = self._waits
        while waits:
            deadline, relay = waits[0]
            if relay.done():
                waits.popleft()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                waits.popleft()
                relay.set_exception(ke.KafkaTimeoutError("not acknowledged before the delivery timeout"))
                continue
            await asyncio.sleep(min(remaining, _MAX_NAP_S))


def _relay(source: asyncio.Future[Any], relay: asyncio.Future[Any]) -> None:
    if relay.done():  # timed out or the waiter was cancelled: drop the late answer
        if not source.cancelled():
            source.exception()
        return
    if source.cancelled():
        relay.cancel()
    elif (exc := source.exception()) is not None:
        relay.set_exception(exc)
    else:
        relay.set_result(source.result())
