"""Histogram bucket boundaries of the telemetry contract (docs/telemetry.md), defined once.

Every duration histogram of the service uses the semantic conventions' HTTP duration buckets (the same
ones the contrib HTTP instrumentations advise), so latency panels and SLO rules can compare them; the two
lag probes use finer buckets, since their interesting range starts at a millisecond. Instruments pass
them as `explicit_bucket_boundaries_advisory`, which the SDK applies unless a View says otherwise.
"""

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
