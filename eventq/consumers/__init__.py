"""Consumer side: handle first, record second, commit last.

So far only :mod:`eventq.consumers.store` (the ``processed_events`` table) exists;
the daemon that uses it is the batch consumer issue. The package exists so the
layout reads like the architecture: producers → Kafka → consumers → processed_events.
"""
