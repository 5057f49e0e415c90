"""Consumer side: handle first, record second, commit last.

The folder reads like the pipeline: :mod:`~eventq.consumers.app` (handlers by event
type) → :mod:`~eventq.consumers.daemon` (fetch, dispatch per partition, commit) →
:mod:`~eventq.consumers.processor` (run handlers, retries) →
:mod:`~eventq.consumers.deadletter` (failed records) and :mod:`~eventq.consumers.retrytopics` (non-blocking retries) →
:mod:`~eventq.consumers.store` (``processed_events``). :mod:`~eventq.consumers.health`
tracks outages and serves liveness/readiness; :mod:`~eventq.consumers.hooks` is the
extension point.
"""

from eventq.consumers.app import App, Handler
from eventq.consumers.context import BatchContext, Context
from eventq.consumers.daemon import Consumer
from eventq.consumers.hooks import Hooks
from eventq.consumers.settings import ConsumerSettings

__all__ = ["App", "BatchContext", "Consumer", "ConsumerSettings", "Context", "Handler", "Hooks"]
