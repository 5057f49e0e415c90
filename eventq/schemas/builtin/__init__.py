"""eventq's own event types, always in the registry: ``eventq.ping.v1``, a free-form ping for smoke tests."""
