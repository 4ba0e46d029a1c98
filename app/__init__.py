"""Observability-first reference service: Flask + gRPC from every gunicorn worker, OpenTelemetry in all."""

__version__ = "0.1.0"
