"""Consumer side: handle first, record second, commit last.

The folder reads like the pipeline. :mod:`~eventq.consumers.app` declares handlers by
event type; :mod:`~eventq.consumers.daemon` runs the stages for each partition's slice
of a fetched batch:

1. :mod:`~eventq.consumers.fetch` — records from the free partitions;
2. :mod:`~eventq.consumers.decode` — CloudEvents, validated, routed;
3. :mod:`~eventq.consumers.dedupe` — events the group finished skip their handler;
4. :mod:`~eventq.consumers.handle` — one attempt loop, retries (and
   :mod:`~eventq.consumers.retrytopics`);
5. :mod:`~eventq.consumers.deadletter` — failed and bad records, as they arrived;
6. :mod:`~eventq.consumers.record` — ``processed_events`` rows (:mod:`~eventq.consumers.store`);
7. :mod:`~eventq.consumers.commit` — offsets, in order.

Each record ends with one outcome (:mod:`~eventq.consumers.outcome`), from which rows,
letters, commits, metrics and spans are derived; :mod:`~eventq.consumers.instruments`
is the one seam that observes the stages (traces, metrics, crash-point tests).
:mod:`~eventq.consumers.health` tracks outages and serves liveness/readiness.
"""

from eventq.consumers.app import App, Handler
from eventq.consumers.context import BatchContext, Context
from eventq.consumers.daemon import Consumer
from eventq.consumers.instruments import Instruments
from eventq.consumers.settings import ConsumerSettings

__all__ = ["App", "BatchContext", "Consumer", "ConsumerSettings", "Context", "Handler", "Instruments"]
