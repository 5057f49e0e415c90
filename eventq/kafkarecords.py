"""A workaround at eventq's Kafka boundary: record batches aiokafka cannot decode.

Kafka header names are "strings" on the wire, but nothing stops a producer from writing
bytes that are not UTF-8. aiokafka decodes them strictly, inside ``getmany``, so one
such record raises ``UnicodeDecodeError`` out of every fetch of its partition — the
daemon dies on it, and again after every restart (Kafka's Java client decodes them with
replacement characters and carries on).

:func:`install` makes aiokafka's fetcher parse each batch as before and, only when that
fails on an undecodable header name, parse that one batch again with aiokafka's own
pure-Python parser reading names with ``errors="surrogateescape"``: the name's bytes
survive as lone surrogates (U+DC80..U+DCFF), which :func:`undecodable_names` finds, so
the consumer can dead-letter the record as ``undecodable`` instead of dying. Well-formed
batches take the same path and cost as without it (one list per batch).

It replaces one module attribute of aiokafka (the ``MemoryRecords`` its fetcher uses),
so it applies to every aiokafka consumer of the process; see docs/adr/0012.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, SupportsIndex, overload

from aiokafka.consumer import fetcher
from aiokafka.record import memory_records
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy

_Fast = memory_records.MemoryRecords


class _LenientBytes(bytearray):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:  # noqa: ARG002
        return super().decode(encoding, "surrogateescape")


class _LenientBuffer(bytearray):
    # aiokafka's parser reads a header name as buffer[a:b].decode("utf-8").
    @overload
    def __getitem__(self, index: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytearray: ...
    def __getitem__(self, index: SupportsIndex | slice) -> int | bytearray:
        item = super().__getitem__(index)
        return _LenientBytes(item) if isinstance(index, slice) else item


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        buffer: Any = self._buffer  # type: ignore[has-type]
        if not isinstance(buffer, _LenientBuffer):
            self._buffer = _LenientBuffer(buffer)


def _reparse(raw: bytes, base_offset: int) -> list[Any]:
    """The records of the batch at ``base_offset`` in ``raw``, header names read leniently."""
    scan = _MemoryRecordsPy(raw)
    while scan.has_next():
        chunk = scan._next_slice  # noqa: SLF001 — the slice the next batch is made of
        batch = scan.next_batch()
        if batch.base_offset == base_offset and chunk is not None:
            return list(_LenientBatch(chunk))
    raise LookupError(f"no record batch at offset {base_offset}")  # pragma: no cover (cannot happen)


class _Batch:
    """One batch as aiokafka's fetcher sees it; iterating falls back to :func:`_reparse`."""

    __slots__ = ("_batch", "_raw")

    def __init__(self, batch: Any, raw: bytes) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next()
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        batch = self._batch
        if batch.is_control_batch:
            return iter(batch)
        try:
            records = list(batch)
        except UnicodeDecodeError:
            records = _reparse(self._raw, batch.base_offset)
        return iter(records)


class _TolerantRecords:
    """aiokafka's ``MemoryRecords`` over one partition's fetched bytes, batches wrapped in :class:`_Batch`."""

    __slots__ = ("_records", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._records = _Fast(raw)

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        return None if batch is None else _Batch(batch, self._raw)


def install() -> None:
    """Make aiokafka's fetcher survive undecodable header names (idempotent)."""
    fetcher.MemoryRecords = _TolerantRecords


def undecodable_names(headers: Sequence[tuple[str, Any]]) -> list[str]:
    """The header names that were not UTF-8 on the wire (read with surrogate escapes)."""
    bad = []
    for name, _ in headers:
        if not name.isascii():
            try:
                name.encode()
            except UnicodeEncodeError:
                bad.append(name)
    return bad


def raw_name(name: str) -> bytes:
    """A header name's bytes on the wire (undoing the surrogate escapes)."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make (not U+DC80..U+DCFF)
        return name.encode("utf-8", "surrogatepass")


def printable(name: str) -> str:
    """A header name as valid text: undecodable bytes become U+FFFD, as Kafka's Java client shows them."""
    return raw_name(name).decode("utf-8", "replace")
