"""Observability-first reference service: Flask + gRPC from every gunicorn worker, OpenTelemetry everywhere."""

__version__ = "0.1.0"
