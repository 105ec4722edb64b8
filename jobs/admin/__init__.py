"""The Django admin of download jobs: the job pages and actions (`downloads`), and the
analytics page with the origin's circuit breaker (`analytics`), and the callers of the
old endpoint (`legacy`). Importing the package registers them, as the admin's
autodiscovery does."""

from jobs.admin import downloads, legacy  # noqa: F401
