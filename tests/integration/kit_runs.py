"""One test body, two runs: the test kit (eventq.testing) and the real daemon on the real broker and database.

A test takes the ``run`` fixture (or ``run_db``, whose kit has a database), feeds
events, runs an App until idle and asserts on what the daemon leaves behind:
``processed_events`` rows, dead letters (read as ``eventq dlq`` reads them) and the
follow-up events on the output topic. The kit run reads those from the kit; the broker
run from PostgreSQL and Kafka (and runs the outbox relay, so a transactional handler's
follow-ups reach their topic there too). The same assertions hold for both, or the kit
is not honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from eventq.config import KafkaSettings
from eventq.consumers import App, ConsumerSettings
from eventq.database import DatabaseSettings
from eventq.dlq.letters import Letter, parse
from eventq.outbox import Relay, RelaySettings
from eventq.producers import ProducerSettings
from eventq.schemas import Event, decode
from eventq.schemas.envelope import encode
from eventq.testing import TestKit
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.conftest import read_to_end
from tests.integration.consumer_kit import run_until_idle

RawRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers


class Run:
    """What both runs share: the topics, the settings, the records fed and not yet run."""

    def __init__(self, topic: str, out_topic: str, settings: ConsumerSettings, database_url: str | None) -> None:
        self.topic = topic
        self.out_topic = out_topic  # where the handlers publish their follow-ups
        self.settings = settings
        self.group = settings.group_id or ""
        self.database_url = database_url  # the run's PostgreSQL (None: a kit keeping rows in memory)
        self._fed: list[RawRecord] = []

    def app(self) -> App:
        """A new App for this run's topic and group, with the demo's schemas."""
        return App(self.group, topics=[self.topic], schemas=DEMO_SCHEMAS)

    def feed(self, *events: Event) -> list[RawRecord]:
        """Queue events for the topic, encoded as any eventq producer writes them (not validated)."""
        out: list[RawRecord] = []
        for event in events:
            encoded = encode(event)
            out.append((encoded.key, encoded.value, encoded.headers))
        self._fed.extend(out)
        return out

    def feed_record(
        self, value: bytes | None, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (),
    ) -> RawRecord:
        """Queue a raw record for the topic."""
        raw = (key, value, list(headers))
        self._fed.append(raw)
        return raw

    def _take(self) -> list[RawRecord]:
        fed, self._fed = self._fed, []
        return fed

    async def run_until_idle(self, app: App) -> None:
        raise NotImplementedError

    async def rows(self) -> dict[str, str]:
        """event id -> outcome of the group's ``processed_events`` rows."""
        raise NotImplementedError

    async def dead_letters(self) -> list[Letter]:
        raise NotImplementedError

    async def published(self) -> list[Event]:
        """The follow-up events on the output topic, in order."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class KitRun(Run):
    """The test kit (in memory, or with ``database_url``)."""

    def __init__(self, topic: str, out_topic: str, settings: ConsumerSettings, database_url: str | None) -> None:
        super().__init__(topic, out_topic, settings, database_url)
        self.kit: TestKit | None = None

    async def run_until_idle(self, app: App) -> None:
        if self.kit is None:
            self.kit = TestKit(app, self.settings, database_url=self.database_url, topics=[self.out_topic])
            await self.kit.start()
        for key, value, headers in self._take():
            self.kit.feed_record(value, key=key, headers=headers, topic=self.topic)
        await self.kit.run_until_idle()

    async def rows(self) -> dict[str, str]:
        assert self.kit is not None
        return {row.event_id: row.outcome for row in self.kit.rows}

    async def dead_letters(self) -> list[Letter]:
        assert self.kit is not None
        return self.kit.dead_letters

    async def published(self) -> list[Event]:
        assert self.kit is not None
        return [f.event for f in self.kit.published if f.topic == self.out_topic]

    async def close(self) -> None:
        if self.kit is not None:
            await self.kit.stop()


class BrokerRun(Run):
    """The real daemon (``Consumer.run(until_idle=True)``) on the dev stack's Kafka and a fresh database."""

    def __init__(
        self, topic: str, out_topic: str, settings: ConsumerSettings, kafka: KafkaSettings, database: str,
    ) -> None:
        super().__init__(topic, out_topic, settings, database)
        self.kafka = kafka
        self.database = database  # (= database_url, never None here)

    async def run_until_idle(self, app: App) -> None:
        fed = self._take()
        if fed:
            producer = AIOKafkaProducer(**self.kafka.client_kwargs(), acks="all", enable_idempotence=True)
            await producer.start()
            try:
                for key, value, headers in fed:
                    await producer.send_and_wait(self.topic, value, key=key, headers=headers, partition=0)
            finally:
                await producer.stop()
        await run_until_idle(app, self.settings)
        relay = RelaySettings(
            kafka=self.kafka, database=DatabaseSettings(url=self.database), poll_interval_s=0.2,
            producer=ProducerSettings(delivery_timeout_s=10.0),
        )
        await Relay(relay).run(until_empty=True)  # a transactional handler's follow-ups, as in production

    async def rows(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.database)
        try:
            found = await conn.fetch(
                "SELECT event_id::text AS event_id, outcome FROM processed_events WHERE consumer_group = $1",
                self.group,
            )
        finally:
            await conn.close()
        return {r["event_id"]: r["outcome"] for r in found}

    async def dead_letters(self) -> list[Letter]:
        return [parse(r) for r in await read_to_end(self.kafka, self.settings.dead_letter_topic_for(self.topic))]

    async def published(self) -> list[Event]:
        records = await read_to_end(self.kafka, self.out_topic)
        return [decode(r.key, r.value, r.headers, timestamp_ms=r.timestamp) for r in records]

