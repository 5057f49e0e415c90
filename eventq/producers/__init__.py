"""Publishing events: the :class:`Producer` and its settings."""

from eventq.producers.producer import Failed, Outcome, Producer, Published, PublishReport
from eventq.producers.settings import ProducerSettings

__all__ = ["Failed", "Outcome", "Producer", "ProducerSettings", "Published", "PublishReport"]
