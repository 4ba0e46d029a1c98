"""Telemetry: OpenTelemetry providers per worker (setup), OTLP export with failure accounting (exporters),
`/metrics` from the same instruments (prometheus_bridge, prometheus_names), JSON logs with secrets scrubbed
(logging, redaction). Import the submodules; this package starts nothing on its own.
"""

import os

# The instrumentations read this once, at their first use, possibly before init_telemetry runs: stable
# HTTP semantic conventions (`http.server.request.duration` in seconds) unless the operator chose otherwise.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
