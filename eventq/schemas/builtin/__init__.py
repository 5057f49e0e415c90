"""eventq's own event types: the demo's and a free-form ping for smoke tests."""
