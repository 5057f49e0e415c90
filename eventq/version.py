"""The package version (one place; read by setup.cfg and the telemetry instrumentation scope)."""

__version__ = "0.1.0"
