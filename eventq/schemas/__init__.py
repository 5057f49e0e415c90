"""The event envelope, its payload schemas, and correlation across handlers."""

from eventq.schemas.correlation import Cause, caused_by, current_cause
from eventq.schemas.envelope import EncodedEvent, Event, decode, encode, new_event_id
from eventq.schemas.registry import SchemaRegistry

__all__ = [
    "Cause",
    "EncodedEvent",
    "Event",
    "SchemaRegistry",
    "caused_by",
    "current_cause",
    "decode",
    "encode",
    "new_event_id",
]
