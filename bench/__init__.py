"""Benchmarks: scripts run as modules from the project's root (`python -m bench.<name>`), not
imported by the service."""
