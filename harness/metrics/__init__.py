"""Metrics suite: scrape ``/metrics`` and check it against ``contracts/metrics/metrics.yaml``, and
that counters move exactly with the traffic the suite sent."""
