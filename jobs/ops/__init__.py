"""For operators: probes (/health, /ready, /metrics), Prometheus metrics, alerts and the
hourly analytics."""
