"""eventq's envelope against the official CloudEvents Python SDK (``cloudevents``), both ways.

Pure encode/decode: no broker. The SDK 2.x has two Kafka bindings, the current
``cloudevents.core.bindings.kafka`` and the older ``cloudevents.v1.kafka`` (1.x's
``cloudevents.kafka``); events from both decode, and both read what eventq writes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import kafka as ce_kafka_v1
from cloudevents.v1.http import CloudEvent as LegacyCloudEvent

from eventq.config import KafkaSettings
from eventq.schemas import Event, decode, encode

TIME = datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)
# The SDK's two Kafka bindings, each in binary or structured mode.
ToKafka = Callable[[CloudEvent, JSONFormat], ce_kafka.KafkaMessage]
LegacyToKafka = Callable[[LegacyCloudEvent], ce_kafka_v1.KafkaMessage]
DATA = {"order_id": "o-1", "amount_cents": 1250, "lines": [{"sku": "A-1", "qty": 2}], "gift": None}


def sdk_event(**attributes: Any) -> CloudEvent:
    attrs: dict[str, Any] = {
        "id": "A234-1234-1234", "source": "/orders/eu-1", "type": "com.example.order.created", "time": TIME,
        "subject": "o-1", "datacontenttype": "application/json", "correlationid": "flow-7",
        "causationid": "cause-3", "partitionkey": "customer-7",
    }
    attrs.update(attributes)
    return CloudEvent({name: value for name, value in attrs.items() if value is not None}, DATA)


def record(message: Any) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:  # a KafkaMessage of either binding
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return key, message.value, list(message.headers.items())


def assert_same(event: Event, sdk: BaseCloudEvent) -> None:
    assert event.id == sdk.get_id()
    assert event.source == sdk.get_source()
    assert event.type == sdk.get_type()
    assert event.time == sdk.get_time()
    assert event.subject == sdk.get_subject()
    assert event.correlation_id == sdk.get_extension("correlationid")
    assert event.causation_id == sdk.get_extension("causationid")
    assert event.key == sdk.get_extension("partitionkey")
    assert event.data == sdk.get_data()


@pytest.mark.parametrize("to_kafka", [ce_kafka.to_binary, ce_kafka.to_structured], ids=["binary", "structured"])
def test_sdk_events_decode_with_every_attribute(to_kafka: ToKafka) -> None:
    """An SDK event sent in binary or structured mode decodes into an Event with the SDK event's attributes."""
    sdk = sdk_event()
    message = to_kafka(sdk, JSONFormat())
    assert_same(decode(*record(message)), sdk)


@pytest.mark.parametrize("to_kafka", [ce_kafka.to_binary, ce_kafka.to_structured], ids=["binary", "structured"])
def test_sdk_event_with_only_required_attributes_decodes(to_kafka: ToKafka) -> None:
    """An SDK event with only the required attributes (and a UUID4 id, no correlation) decodes; the id is its own
    correlation id and the time, which the SDK always sets, is kept to the millisecond."""
    sdk = CloudEvent({"source": "/s", "type": "com.example.ping"}, {"n": 1})
    event = decode(*record(to_kafka(sdk, JSONFormat())))
    sdk_time = sdk.get_time()
    assert sdk_time is not None
    assert (event.id, event.correlation_id, event.causation_id, event.key) == (sdk.get_id(), sdk.get_id(), None, None)
    assert event.time == sdk_time.replace(microsecond=sdk_time.microsecond // 1000 * 1000)
    assert event.data == {"n": 1}


def test_sdk_binary_event_without_content_type_decodes_as_json() -> None:
    """Without datacontenttype the SDK writes no content-type header; the value is still read as JSON."""
    sdk = sdk_event(datacontenttype=None)
    message = ce_kafka.to_binary(sdk, JSONFormat())
    assert "content-type" not in message.headers
    assert_same(decode(*record(message)), sdk)


@pytest.mark.parametrize("to_kafka", [ce_kafka_v1.to_binary, ce_kafka_v1.to_structured], ids=["binary", "structured"])
def test_events_from_the_older_sdk_binding_decode(to_kafka: LegacyToKafka) -> None:
    """Events from the SDK's older binding (cloudevents.v1.kafka) decode in both modes, with their attributes."""
    sdk = LegacyCloudEvent(
        {"id": "A234-1234-1234", "source": "/orders/eu-1", "type": "com.example.order.created",
         "time": "2026-11-28T10:00:00.123Z", "subject": "o-1", "datacontenttype": "application/json",
         "correlationid": "flow-7", "causationid": "cause-3", "partitionkey": "customer-7"},
        DATA,
    )
    event = decode(*record(to_kafka(sdk)))
    assert (event.id, event.source, event.type, event.time, event.subject) == (
        "A234-1234-1234", "/orders/eu-1", "com.example.order.created", TIME, "o-1"
    )
    assert (event.correlation_id, event.causation_id, event.key, event.data) == (
        "flow-7", "cause-3", "customer-7", DATA
    )


def eventq_event() -> Event:
    return Event(
        type="com.example.order.created", source="/orders/eu-1", data=DATA, key="customer-7", subject="o-1",
        time=TIME, correlation_id="flow-7", causation_id="cause-3",
    )


def test_sdk_reads_every_attribute_of_what_eventq_encodes() -> None:
    """The SDK's from_binary reads eventq's record with every attribute equal: id, source, type, time, subject,
    correlationid/causationid extensions and data."""
    event = eventq_event()
    encoded = encode(event)
    message = ce_kafka.KafkaMessage(headers=dict(encoded.headers), key=encoded.key, value=encoded.value)
    sdk = ce_kafka.from_binary(message, JSONFormat())
    assert sdk.get_specversion() == "1.0"
    assert sdk.get_datacontenttype() == "application/json"
    assert_same(event, sdk)


def test_older_sdk_binding_reads_what_eventq_encodes() -> None:
    """The SDK's older from_binary (cloudevents.v1.kafka) reads eventq's record with every attribute equal."""
    event = eventq_event()
    encoded = encode(event)
    sdk = ce_kafka_v1.from_binary(
        ce_kafka_v1.KafkaMessage(headers=dict(encoded.headers), key=encoded.key, value=encoded.value)
    )
    assert (sdk["id"], sdk["source"], sdk["type"], sdk["subject"], sdk["specversion"]) == (
        event.id, "/orders/eu-1", "com.example.order.created", "o-1", "1.0"
    )
    assert datetime.fromisoformat(sdk["time"]) == TIME
    assert (sdk["correlationid"], sdk["causationid"], sdk.get_data()) == ("flow-7", "cause-3", DATA)
    assert sdk["partitionkey"] == b"customer-7"


@pytest.mark.kafka
@pytest.mark.postgres
async def test_a_daemon_handles_sdk_events_in_both_modes_once_each(
    kafka_settings: KafkaSettings, database: str
) -> None:
    """SDK records (binary and structured, non-UUID ids) sent by a plain Kafka client are handled once each."""
    import uuid

    from aiokafka import AIOKafkaProducer

    from eventq.consumers import App, Context
    from eventq.kafka import create_topics
    from tests.integration.consumer_kit import consumer_settings as settings_for
    from tests.integration.consumer_kit import rows, run_until_idle

    topic = f"sdk-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_settings, [topic], partitions=2)
    events = [sdk_event(id=f"A234-{n}") for n in range(6)]
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs(), acks="all")
    await producer.start()
    try:
        for n, sdk in enumerate(events):
            message = (ce_kafka.to_binary if n < 3 else ce_kafka.to_structured)(sdk, JSONFormat())
            key, value, headers = record(message)
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()
    seen: list[Event] = []
    app = App("sdk", topics=[topic])

    @app.handler("com.example.order.created", schema=None)
    async def take(event: Event, ctx: Context) -> None:
        seen.append(event)

    settings = settings_for(kafka_settings, database, topic)
    await run_until_idle(app, settings)

    assert sorted(e.id for e in seen) == [f"A234-{n}" for n in range(6)]
    for event in seen:
        assert_same(event, events[int(event.id.split("-")[1])])
    assert [r["outcome"] for r in await rows(database, settings.group_id or "")] == ["handled"] * 6
