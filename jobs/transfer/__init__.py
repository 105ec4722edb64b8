"""Moving a file from its origin into storage: origins (HTTP, directory, synthetic),
staging with resume, storage writers and signed links, the origin's circuit breaker."""
