"""Telemetry: the platform's OpenTelemetry distro (distro, environment), the Flask instrumentor, `/metrics`
across workers (prometheus_bridge, prometheus_names), JSON logs with secrets scrubbed (logging, redaction),
and the contract's bucket boundaries (buckets). Import the submodules; this package starts nothing."""
