"""lambda-otel: an AWS Lambda extension that exports Lambda telemetry as OpenTelemetry (OTLP/HTTP)."""

__version__ = "0.1.0"
