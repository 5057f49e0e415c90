"""Consumer daemons (handle first, record second, commit last).

Not built yet: see the batch consumer issue. The package exists so the layout
reads like the architecture: producers → Kafka → consumers → processed_events.
"""
