"""JSON Schemas of the example app's event types (``<type>.json``)."""
