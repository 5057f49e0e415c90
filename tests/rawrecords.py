"""Write records no ordinary client will write: header names that are not UTF-8, any timestamp.

aiokafka and confluent-kafka both encode header names as strict UTF-8, and producers
may refuse negative timestamps, yet other clients (and a broker) accept such records,
so eventq must read them. :func:`produce_raw_record` encodes one record batch (magic 2,
uncompressed, not transactional, not idempotent) byte by byte and sends it in a plain
ProduceRequest (acks=all) to the partition's leader, bypassing the producer's encoder.

The batch layout follows the Kafka protocol's RecordBatch (KIP-98); the CRC is CRC-32C
over everything from the attributes field to the end. :func:`encode_batch` is exposed so
a test can compare it with aiokafka's own builder for records aiokafka can write.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c, encode_varint

from eventq.config import KafkaSettings

Header = tuple[bytes, bytes | None]

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, records
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_CRC_AT = 17  # after baseOffset (8), batchLength (4), partitionLeaderEpoch (4), magic (1)
_ATTRIBUTES_AT = 21
_LENGTH_FROM = 12  # batchLength counts the bytes after itself


def _varint(value: int, out: bytearray) -> None:
    encode_varint(value, out.append)  # zig-zag, like every length and delta in a v2 record


def _nullable(raw: bytes | None, out: bytearray) -> None:
    if raw is None:
        _varint(-1, out)
    else:
        _varint(len(raw), out)
        out.extend(raw)


def encode_record(*, key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> bytes:
    """One v2 record with offset and timestamp deltas 0, length-prefixed."""
    body = bytearray(b"\x00")  # record attributes (unused)
    _varint(0, body)  # timestamp delta
    _varint(0, body)  # offset delta
    _nullable(key, body)
    _nullable(value, body)
    _varint(len(headers), body)
    for name, header_value in headers:
        _varint(len(name), body)
        body.extend(name)
        _nullable(header_value, body)
    out = bytearray()
    _varint(len(body), out)
    out.extend(body)
    return bytes(out)


def encode_batch(*, key: bytes | None, value: bytes | None, headers: Sequence[Header], timestamp_ms: int) -> bytes:
    """A RecordBatch (magic 2, no compression, CreateTime) holding exactly one record."""
    record = encode_record(key=key, value=value, headers=headers)
    buffer = bytearray(_BATCH_HEADER.size) + record
    _BATCH_HEADER.pack_into(
        buffer, 0,
        0,  # baseOffset: the broker assigns it
        len(buffer) - _LENGTH_FROM,
        -1,  # partitionLeaderEpoch: unknown to a producer
        2,  # magic
        0,  # crc, computed below over the filled buffer
        0,  # attributes: no compression, CreateTime, not transactional, not control
        0,  # lastOffsetDelta: one record
        timestamp_ms, timestamp_ms,  # base and max timestamp
        -1, -1, -1,  # producerId, producerEpoch, baseSequence: not idempotent
        1,  # records
    )
    struct.pack_into(">I", buffer, _CRC_AT, calc_crc32c(bytes(buffer[_ATTRIBUTES_AT:])))
    return bytes(buffer)


async def produce_raw_record(
    kafka_settings: KafkaSettings,
    topic: str,
    partition: int,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes | None]],
    timestamp_ms: int,
) -> int:
    """Append one record with exactly these bytes to ``topic``/``partition``; return its offset.

    Header names are raw bytes (e.g. ``b"\\xff\\xfe"``), a header value may be None, and
    ``timestamp_ms`` is written as given (negative, far future). Waits for acks=all; raises
    the broker's error (an aiokafka ``KafkaError``) if it refuses the batch, e.g. a
    timestamp outside the topic's ``message.timestamp.*`` limits.
    """
    batch = encode_batch(key=key, value=value, headers=headers, timestamp_ms=timestamp_ms)
    client = AIOKafkaClient(**kafka_settings.client_kwargs())
    await client.bootstrap()
    try:
        # A topic created a moment ago may still be moving its leadership (NotLeaderForPartition,
        # retriable): ask for fresh metadata and send again, as a producer would.
        for attempt in range(10):
            await client._wait_on_metadata(topic)  # noqa: SLF001 - the client has no public metadata wait
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                raise RuntimeError(f"no leader for {topic}/{partition}")
            request = ProduceRequest(transactional_id=None, required_acks=-1, timeout=30_000,
                                     topics=[(topic, [(partition, batch)])])
            response = await client.send(leader, request)
            [(_, [answer])] = response.topics
            error_code, offset = answer[1], answer[2]
            error = for_code(error_code) if error_code != 0 else None
            if error is None or not error.retriable or attempt == 9:
                break
            await client.force_metadata_update()
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    if error is not None:
        raise error(f"the broker refused the raw record for {topic}/{partition}")
    return int(offset)
