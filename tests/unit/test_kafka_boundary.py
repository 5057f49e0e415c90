"""The Kafka boundary builds every admin client, and a daemon loads its schemas once, without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import errors as ke

from eventq import kafka
from eventq.config import KafkaSettings
from eventq.consumers import App, Consumer, ConsumerSettings, Context
from eventq.dlq.letters import admin_client
from eventq.errors import BrokerUnavailable, ConsumerError, EventqError
from eventq.schemas import Event
from eventq.schemas.registry import SchemaRegistry

NOWHERE = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # nothing listens on port 1


async def test_a_dlq_admin_client_that_cannot_connect_is_a_retriable_consumer_error() -> None:
    """The dead-letter tools' admin client, built by eventq.kafka.admin, names the unreachable broker."""
    with pytest.raises(ConsumerError, match=r"^cannot reach a Kafka broker at 127\.0\.0\.1:1 \(") as caught:
        async with admin_client(NOWHERE):
            pass
    assert caught.value.retriable
    assert "start it (eventq dev up) or fix EVENTQ_BOOTSTRAP_SERVERS" in str(caught.value)
    assert isinstance(caught.value.__cause__, ke.KafkaConnectionError)


async def test_eventqs_own_admin_calls_that_cannot_connect_are_broker_unavailable() -> None:
    """topic_shapes (one of eventq's own admin calls) raises BrokerUnavailable naming the topics."""
    with pytest.raises(BrokerUnavailable, match=r"cannot reach a Kafka broker at 127\.0\.0\.1:1") as caught:
        await kafka.topic_shapes(NOWHERE, ["orders"])
    assert "orders" in str(caught.value)


async def test_an_admin_start_failure_the_caller_does_not_name_propagates_unchanged() -> None:
    """When ``unreachable`` gives None, the client's own exception comes through as it was raised."""
    def unnamed(exc: Exception) -> EventqError | None:
        return None

    with pytest.raises(ke.KafkaConnectionError):
        async with kafka.admin(NOWHERE, unreachable=unnamed):
            pass


def test_a_daemon_loads_its_schemas_once_and_its_producer_shares_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consumer() loads one SchemaRegistry (with the App's inline schemas) and gives it to its producer."""
    loads: list[Any] = []
    original = SchemaRegistry.load.__func__  # type: ignore[attr-defined]

    def counting(cls: type[SchemaRegistry], *args: Any, **kwargs: Any) -> SchemaRegistry:
        loads.append(args)
        registry: SchemaRegistry = original(cls, *args, **kwargs)
        return registry

    monkeypatch.setattr(SchemaRegistry, "load", classmethod(counting))
    app = App("billing", topics=["orders"])

    @app.handler("com.example.order.created", schema={"type": "object", "required": ["order_id"]})
    async def created(event: Event, ctx: Context) -> None:
        pass

    consumer = Consumer(app, ConsumerSettings(kafka=NOWHERE))

    assert len(loads) == 1
    assert consumer._producer.registry is consumer.registry
    assert "com.example.order.created" in consumer._producer.registry
