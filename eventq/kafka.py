"""The one boundary between eventq and aiokafka.

Clients are built from :class:`~eventq.config.KafkaSettings` here, and every
aiokafka exception that reaches eventq's callers is translated here into the tree
of :mod:`eventq.errors` (``raise translate(...) from exc``). :func:`explain` is the one
place that names security causes — failed authentication, an unknown SASL mechanism,
a certificate that is untrusted, expired or for another host, TLS meeting plaintext,
and a missing ACL — with what to do; everything else that talks to Kafka uses it.

aiokafka's bootstrap tries each server and then raises a bare "Unable to bootstrap",
logging (not chaining) why each connection failed. So that the cause can still be
named, :func:`remember_connect_errors` (run when eventq builds its first client) wraps
``aiokafka.client.create_conn`` to remember, per asyncio task, the last exception a
connection attempt raised (it is re-raised unchanged; nothing else about aiokafka
changes). See docs/adr/0014.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as ke
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.metadata import MetadataRequest

from eventq import kafkarecords
from eventq.config import KafkaSettings
from eventq.errors import (
    BrokerUnavailable,
    ConfigError,
    ConsumerError,
    EventqError,
    MessageTooLarge,
    PublishError,
    PublishTimeout,
    TopicNotFound,
)

# Why this task's last connection attempt failed (see the module docstring).
_last_connect_error: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "eventq_last_connect_error", default=None
)
_create_conn = aiokafka.client.create_conn


async def _remembering_create_conn(*args: Any, **kwargs: Any) -> Any:
    try:
        conn = await _create_conn(*args, **kwargs)
    except BaseException as exc:
        _last_connect_error.set(exc)
        raise
    _last_connect_error.set(None)
    return conn


def remember_connect_errors() -> None:
    """Wrap ``aiokafka.client.create_conn`` so that :func:`explain` can name why bootstrap failed.

    Process-wide and idempotent; called by :meth:`KafkaSettings.client_kwargs`, so it
    happens when eventq first builds a client, never on import.
    """
    if not getattr(aiokafka.client.create_conn, "_eventq", False):
        _remembering_create_conn._eventq = True  # type: ignore[attr-defined]
        aiokafka.client.create_conn = _remembering_create_conn

# OpenSSL verify codes (X509_V_ERR_*) of a server certificate eventq can name.
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_EXPIRED, _NOT_YET_VALID = 10, 9
_WRONG_HOST = {62, 64}  # hostname mismatch, IP address mismatch
# The first bytes a TLS server sends (a record header: handshake 0x16 or alert 0x15,
# version 3.x), read by a plaintext client as the size of a Kafka response.
_TLS_RECORD_SIZES = range(0x15030000, 0x1603FFFF + 1)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, then what caused it (chained, or what bootstrap only logged), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is None and current.__context__ is None and _is_bootstrap_failure(current):
            current = _last_connect_error.get()
        else:
            current = current.__cause__ or current.__context__
    return chain


def _is_bootstrap_failure(exc: BaseException) -> bool:
    return isinstance(exc, ke.KafkaConnectionError) and "Unable to bootstrap" in str(exc)


def _principal(settings: KafkaSettings) -> str:
    if settings.sasl_username:
        return f"principal User:{settings.sasl_username}"
    if settings.ssl_certfile:
        return "the principal of the client certificate (EVENTQ_SSL_CERTFILE)"
    return "this client's principal"


def explain(
    exc: BaseException,
    settings: KafkaSettings,
    *,
    topic: str | None = None,
    operation: str = "Write",
    group: str | None = None,
    transactional_id: str | None = None,
) -> str | None:
    """Name the security cause of a Kafka failure and what to do, or None if it is not one.

    ``exc`` is what a client raised (its chain is searched, including the connection
    error aiokafka's bootstrap only logs). ``topic``/``operation``, ``group`` and
    ``transactional_id`` say what the client was doing, so that a missing ACL is named
    as operation + resource. The text fits after ``Error: ``, on one line.
    """
    where = settings.bootstrap_servers
    protocol = settings.security_protocol
    for cause in _causes(exc):
        reason = _explain_one(cause, settings, where, protocol, topic, operation, group, transactional_id)
        if reason is not None:
            return reason
    return None


def _explain_one(  # noqa: PLR0911, PLR0912, C901 - one table of cases, read top to bottom
    exc: BaseException,
    settings: KafkaSettings,
    where: str,
    protocol: str,
    topic: str | None,
    operation: str,
    group: str | None,
    transactional_id: str | None,
) -> str | None:
    who = _principal(settings)
    if isinstance(exc, (ke.SaslAuthenticationFailed, ke.AuthenticationFailedError)):
        return (
            f"authentication failed: the broker at {where} rejected user {settings.sasl_username!r} with "
            f"{settings.sasl_mechanism} (wrong password, unknown user, or no {settings.sasl_mechanism} "
            "credentials for that user); check EVENTQ_SASL_USERNAME and EVENTQ_SASL_PASSWORD"
        )
    if isinstance(exc, (ke.UnsupportedSaslMechanismError, ke.AuthenticationMethodNotSupported)):
        return (
            f"the broker at {where} does not enable SASL mechanism {settings.sasl_mechanism} on this listener; "
            "set EVENTQ_SASL_MECHANISM to one listed in its sasl.enabled.mechanisms"
        )
    if isinstance(exc, ke.IllegalSaslStateError):
        return (
            f"the listener at {where} does not speak SASL; check EVENTQ_SECURITY_PROTOCOL={protocol} against "
            "the broker's listener (SSL or PLAINTEXT?)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        code = exc.verify_code
        if code == _EXPIRED or code == _NOT_YET_VALID:
            return (
                f"the TLS certificate of the broker at {where} is not valid now ({detail}); have the broker's "
                "certificate renewed (check the clocks too)"
            )
        if code in _WRONG_HOST:
            return (
                f"the TLS certificate of the broker at {where} is not issued for that address ({detail}); "
                "connect by a name or IP its subjectAltName lists (EVENTQ_BOOTSTRAP_SERVERS and the "
                "broker's advertised.listeners), or have the certificate reissued with that name"
            )
        if code in _UNTRUSTED:
            trusted = f"EVENTQ_SSL_CAFILE={settings.ssl_cafile}" if settings.ssl_cafile else "the system's CAs"
            return (
                f"the TLS certificate of the broker at {where} is not signed by a CA in {trusted} ({detail}); "
                "set EVENTQ_SSL_CAFILE to the CA that signed the broker's certificate"
            )
        return f"the TLS certificate of the broker at {where} failed verification ({detail}); check EVENTQ_SSL_CAFILE"
    if isinstance(exc, ssl.SSLError) and (
        "ALERT_BAD_CERTIFICATE" in str(exc) or "CERTIFICATE_REQUIRED" in str(exc)
        or "ALERT_UNKNOWN_CA" in str(exc)
    ):
        return (
            f"the broker at {where} refused this client's TLS certificate (none was sent, or it is not signed by "
            "a CA the broker trusts); set EVENTQ_SSL_CERTFILE and EVENTQ_SSL_KEYFILE to a certificate the "
            "broker's ssl.truststore accepts"
        )
    if protocol in ("SSL", "SASL_SSL") and (
        isinstance(exc, (ssl.SSLEOFError, ConnectionResetError))
        or (isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc))
    ):
        return (
            f"the TLS handshake with {where} failed ({type(exc).__name__}): the port does not speak TLS (a "
            f"PLAINTEXT listener?); use the broker's {protocol} port in EVENTQ_BOOTSTRAP_SERVERS or set "
            "EVENTQ_SECURITY_PROTOCOL to what that listener uses"
        )
    if (
        protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
        and isinstance(exc, asyncio.IncompleteReadError)
        and exc.expected in _TLS_RECORD_SIZES
    ):
        return (
            f"the broker at {where} answered with TLS: that listener is SSL or SASL_SSL; set "
            "EVENTQ_SECURITY_PROTOCOL=SSL or SASL_SSL (and EVENTQ_SSL_CAFILE), or use its plaintext port"
        )
    if isinstance(exc, ke.TopicAuthorizationFailedError):
        resource = f"Topic:{topic}" if topic else "the topic"
        return (
            f"{who} is not allowed to {operation} {resource}; grant it {operation} (and Describe) on "
            f"{resource} (kafka-acls --add --operation {operation} --topic ...)"
        )
    if isinstance(exc, ke.GroupAuthorizationFailedError):
        name = group or (str(exc.args[0]) if exc.args else "?")
        return (
            f"{who} is not allowed to use consumer group {name!r}; grant it Read and Describe on Group:{name} "
            "(a prefixed ACL covers every run or daemon sharing the prefix), or use a group it may use "
            "(--group or EVENTQ_GROUP; --run for a replay)"
        )
    if isinstance(exc, ke.TransactionalIdAuthorizationFailed):
        name = transactional_id or (str(exc.args[0]) if exc.args else "?")
        return (
            f"{who} is not allowed to use transactional id {name!r}; grant it Write and Describe on "
            f"TransactionalId:{name} (prefixed eventq-replay. covers every replay run), or pick a --run "
            "name its ACLs cover"
        )
    if isinstance(exc, ke.ClusterAuthorizationFailedError):
        return f"{who} lacks a right on the cluster resource ({exc}); grant it the operation named in the broker's log"
    return None


TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
"""What Kafka allows as a topic name (checked before a name from outside reaches a request)."""


def translate(exc: BaseException, *, topic: str, settings: KafkaSettings) -> EventqError:
    """Map an aiokafka (or OS) exception to eventq's error tree for one topic.

    A security cause (see :func:`explain`) becomes a :class:`PublishError` that is not
    retriable: trying again with the same settings cannot help.
    """
    where = settings.bootstrap_servers
    if isinstance(exc, EventqError):
        return exc
    if isinstance(exc, (ke.MessageSizeTooLargeError, ke.RecordTooLargeError, ke.RecordListTooLargeError)):
        return MessageTooLarge(topic, f"the record is too large for the broker or client limit ({exc})")
    if isinstance(exc, ke.UnknownTopicOrPartitionError):
        return TopicNotFound(topic, "the topic does not exist; create it first (eventq topics create)")
    reason = explain(exc, settings, topic=topic or None)
    if reason is not None:
        return PublishError(topic, reason)
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
async def admin(
    settings: KafkaSettings, *, unreachable: Callable[[Exception], EventqError | None]
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started aiokafka admin client, closed on exit: the one place eventq builds one.

    If it cannot start, the error ``unreachable(exc)`` names is raised from ``exc`` (each
    caller says what it was doing, in its own error); when that gives None, ``exc`` itself
    propagates. The client is closed either way.
    """
    client = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        try:
            await client.start()
        except Exception as exc:
            error = unreachable(exc)
            if error is None:
                raise
            raise error from exc
        yield client
    finally:
        await client.close()


def _admin(
    settings: KafkaSettings, topics: list[str], doing: str = "describe"
) -> contextlib.AbstractAsyncContextManager[AIOKafkaAdminClient]:
    # eventq's own admin calls: a client that cannot start is a PublishError naming the topics.
    def unreachable(exc: Exception) -> EventqError | None:
        if not isinstance(exc, (ke.KafkaError, OSError)):
            return None
        reason = explain(exc, settings)
        if reason is not None:
            return PublishError(",".join(topics), reason, doing=doing)
        return BrokerUnavailable(
            ",".join(topics), f"cannot reach a Kafka broker at {settings.bootstrap_servers}", doing=doing
        )

    return admin(settings, unreachable=unreachable)


def unreachable_for_reading(settings: KafkaSettings, exc: BaseException) -> ConsumerError:
    """The error for a reader (the dead-letter tools) whose client could not start.

    A security cause (:func:`explain`) is not retriable; anything else is named as a
    broker that cannot be reached (retriable).
    """
    reason = explain(exc, settings, operation="Read")
    if reason is not None:  # authentication, TLS or a missing ACL: retrying cannot help
        return ConsumerError(reason)
    return ConsumerError(
        f"cannot reach a Kafka broker at {settings.bootstrap_servers} ({type(exc).__name__}); start it "
        "(eventq dev up) or fix EVENTQ_BOOTSTRAP_SERVERS", retriable=True,
    )


async def topic_refusal(client: Any, topic: str) -> ke.KafkaError | None:
    """The authorisation error the brokers give for ``topic`` when asked for it by name, if any.

    ``client`` is a started aiokafka client (``producer.client``). A metadata request
    for every topic lists only the topics this principal may Describe; asked by name,
    the broker says ``TOPIC_AUTHORIZATION_FAILED`` instead. Other answers give None.
    """
    try:
        response: Any = await client.send(
            client.get_random_node(), MetadataRequest([topic], allow_auto_topic_creation=False)
        )
    except (ke.KafkaError, OSError, TimeoutError):
        return None
    for entry in response.topics:
        if entry[1] == topic and ke.for_code(entry[0]) is ke.TopicAuthorizationFailedError:
            return ke.TopicAuthorizationFailedError(topic)
    return None


async def check_group_access(settings: KafkaSettings, group: str) -> None:
    """Raise :class:`ConsumerError` naming the missing ACL if this principal may not use ``group``.

    aiokafka's consumer starts without asking for its group, and then retries a refused
    group in every fetch, forever; asking once up front (the group's committed offsets,
    which needs Describe on it) turns that into an error at start-up. Any other failure
    of the question (a coordinator still loading, say) is left to the consumer.
    """
    try:
        async with asyncio.timeout(30), _admin(settings, []) as admin:
            await admin.list_consumer_group_offsets(group)
    except ke.GroupAuthorizationFailedError as exc:
        raise ConsumerError(explain(exc, settings, group=group) or str(exc)) from exc
    except (EventqError, ke.KafkaError, OSError, TimeoutError):
        return


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
    async with _admin(settings, wanted, "create") as admin:
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
                if code in _NOT_AUTHORISED:
                    raise PublishError(
                        name,
                        f"{_principal(settings)} is not allowed to Create Topic:{name}; grant it Create on that "
                        "topic (or on the Cluster), or create the topic beforehand as a principal that may "
                        "(a consumer daemon then needs EVENTQ_CREATE_TOPICS=false)",
                        doing="create",
                    )
                if code not in (0, 36):
                    raise PublishError(name, f"error {code}: {message}", doing="create")
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
            if resource["error_code"] in _NOT_AUTHORISED:
                name = resource["resource_name"]
                raise ConsumerError(
                    f"{_principal(settings)} is not allowed to DescribeConfigs Topic:{name} (eventq reads its "
                    "max.message.bytes so that every dead letter fits its topic); grant it DescribeConfigs "
                    f"on Topic:{name}"
                )
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
            raise PublishError(
                ",".join(topics), f"created, but not listed by the brokers within {timeout_s:.0f}s", doing="create"
            )
        await asyncio.sleep(0.1)


# TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED
_NOT_AUTHORISED = (29, 31)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    result = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        result.append((name, code, message))
    return result


async def ask_metadata(client: Any) -> None:
    """One metadata request for the topics ``client`` (an aiokafka client) tracks, all topics if none.

    The health probes' question "does a broker answer": a request for every topic costs
    tens of milliseconds of event-loop time on a cluster of hundreds of topics, once a
    second; one for the client's own topics costs the same on any cluster. Raises
    KafkaError if no broker answered.
    """
    from aiokafka.cluster import ClusterMetadata

    topics = sorted(client._topics)  # noqa: SLF001 - the topics aiokafka already refreshes for this client
    if not topics:
        await client.fetch_all_metadata()
        return
    fresh = ClusterMetadata(metadata_max_age_ms=client._metadata_max_age_ms)  # noqa: SLF001
    if not await client._metadata_update(fresh, topics):  # noqa: SLF001
        raise ke.KafkaError("Unable to get cluster metadata over all known brokers")
