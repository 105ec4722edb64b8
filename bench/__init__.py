"""Benchmarks: scripts run by path (`python bench/NAME.py`), not imported by the service."""
