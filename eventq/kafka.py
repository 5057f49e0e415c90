"""The one boundary between eventq and aiokafka.

Clients are built from :class:`~eventq.config.KafkaSettings` here, and every
aiokafka exception that reaches eventq's callers is translated here into the tree
of :mod:`eventq.errors` (``raise translate(...) from exc``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as ke
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eventq import kafkarecords
from eventq.config import KafkaSettings
from eventq.errors import (
    BrokerUnavailable,
    ConfigError,
    EventqError,
    MessageTooLarge,
    PublishError,
    PublishTimeout,
    TopicNotFound,
)


def translate(exc: BaseException, *, topic: str, settings: KafkaSettings) -> EventqError:
    """Map an aiokafka (or OS) exception to eventq's error tree for one topic."""
    where = settings.bootstrap_servers
    if isinstance(exc, EventqError):
        return exc
    if isinstance(exc, (ke.MessageSizeTooLargeError, ke.RecordTooLargeError, ke.RecordListTooLargeError)):
        return MessageTooLarge(topic, f"the record is too large for the broker or client limit ({exc})")
    if isinstance(exc, ke.UnknownTopicOrPartitionError):
        return TopicNotFound(topic, "the topic does not exist; create it first (eventq topics create)")
    if isinstance(exc, (ke.TopicAuthorizationFailedError, ke.ClusterAuthorizationFailedError)):
        return PublishError(topic, f"not authorised to write; check the ACLs of this principal ({exc})")
    if isinstance(exc, (ke.AuthenticationFailedError, ke.SaslAuthenticationFailed)):
        return PublishError(topic, "authentication failed; check EVENTQ_SASL_USERNAME/EVENTQ_SASL_PASSWORD")
    if isinstance(exc, ke.KafkaTimeoutError):
        return PublishTimeout(
            topic,
            f"no acknowledgement from the brokers at {where} within the delivery timeout "
            "(broker down, unreachable or overloaded); the event may or may not have been "
            "written, so publishing it again is safe only because consumers dedupe by event id",
        )
    if isinstance(exc, (ke.KafkaConnectionError, ke.NodeNotReadyError, OSError)):
        return BrokerUnavailable(
            topic,
            f"cannot reach a Kafka broker at {where}; start it (eventq dev up) or fix "
            "EVENTQ_BOOTSTRAP_SERVERS",
        )
    if isinstance(exc, ke.KafkaError):
        error = PublishError(topic, f"{type(exc).__name__}: {exc}")
        error.retriable = bool(getattr(exc, "retriable", False))
        return error
    return PublishError(topic, f"unexpected {type(exc).__name__}: {exc}")


def consumer(settings: KafkaSettings, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer for ``settings`` that survives records aiokafka cannot decode.

    A header name that is not UTF-8 comes through read with surrogate escapes (see
    :mod:`eventq.kafkarecords`) instead of failing every fetch of its partition.
    """
    kafkarecords.install()
    return AIOKafkaConsumer(**settings.client_kwargs(), **options)


async def stop_producer(producer: AIOKafkaProducer, timeout: float) -> bool:
    """Stop an aiokafka producer, waiting at most ``timeout`` s for pending batches.

    Returns False when batches were still unacknowledged and had to be failed: an
    idempotent aiokafka producer retries forever, so its ``stop()`` would otherwise
    never return while the broker is unreachable.
    """
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if done:
        stopping.result()
        return True
    # No public API fails pending batches; this is the accumulator's own shutdown path.
    producer._message_accumulator.fail_all(  # noqa: SLF001
        ke.KafkaTimeoutError("producer stopped before the broker acknowledged")
    )
    await stopping
    return False


@contextlib.asynccontextmanager
async def _admin(settings: KafkaSettings, topics: list[str]) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        try:
            await admin.start()
        except (ke.KafkaConnectionError, ke.KafkaTimeoutError, OSError) as exc:
            raise BrokerUnavailable(
                ",".join(topics), f"cannot reach a Kafka broker at {settings.bootstrap_servers}"
            ) from exc
        yield admin
    finally:
        await admin.close()


async def create_topics(
    settings: KafkaSettings,
    topics: Iterable[str],
    *,
    partitions: int = 6,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create topics that do not exist yet; return the names that were created.

    Returns once the brokers list every new topic, so it can be published to at once.
    Idempotent: existing topics are left as they are (their partition count is not
    changed).
    """
    if partitions < 1:
        raise ConfigError(f"partitions={partitions} must be at least 1")
    wanted = list(dict.fromkeys(topics))
    async with _admin(settings, wanted) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [
                NewTopic(t, partitions, replication_factor, topic_configs=dict(config or {}))
                for t in missing
            ]
            response: Any = await admin.create_topics(new)
            for name, code, message in _topic_errors(response):
                # 36 = TOPIC_ALREADY_EXISTS: a concurrent creator won the race; fine.
                if code not in (0, 36):
                    raise PublishError(name, f"could not create topic (error {code}: {message})")
            await _until_listed(admin, missing)
        return missing


async def partition_counts(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each existing topic among ``topics`` has (missing ones are left out)."""
    return {topic: partitions for topic, (partitions, _) in (await topic_shapes(settings, topics)).items()}


async def topic_shapes(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(partitions, replication factor) of each existing topic among ``topics`` (missing ones are left out).

    The replication factor is the replica count of the topic's first partition.
    """
    wanted = list(dict.fromkeys(topics))
    async with _admin(settings, wanted) as admin:
        descriptions: Any = await admin.describe_topics(wanted)
    return {
        d["topic"]: (len(d["partitions"]), len(min(d["partitions"], key=lambda p: p["partition"])["replicas"]))
        for d in descriptions
        if d["error_code"] == 0 and d["partitions"]
    }


async def max_message_bytes(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """Each existing topic's ``max.message.bytes`` (the largest record batch it accepts)."""
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return {}
    async with _admin(settings, wanted) as admin:
        responses: Any = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in wanted]
        )
    limits = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"] if resource["error_code"] == 0 else ():
                if entry["config_names"] == "max.message.bytes" and str(entry["config_value"]).isdigit():
                    limits[resource["resource_name"]] = int(entry["config_value"])
    return limits


async def _until_listed(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float = 10.0) -> None:
    # The controller answers before every broker's metadata lists the new topic;
    # returning only once it is listed lets callers publish to it straight away.
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not set(topics) <= set(await admin.list_topics()):
        if loop.time() >= give_up:
            raise PublishError(",".join(topics), f"created, but not listed by the brokers within {timeout_s:.0f}s")
        await asyncio.sleep(0.1)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    result = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        result.append((name, code, message))
    return result
