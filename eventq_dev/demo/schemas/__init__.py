"""JSON Schemas of the demo's event types, one ``<type>.json`` each.

A schema source: :data:`eventq_dev.demo.SCHEMAS` names this package."""
