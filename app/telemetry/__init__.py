"""Telemetry: OpenTelemetry providers per worker (setup), OTLP export with failure accounting (exporters),
`/metrics` from the same instruments (prometheus_bridge, prometheus_names), JSON logs with secrets scrubbed
(logging, redaction). Import the submodules; this package imports nothing heavy on its own.
"""
