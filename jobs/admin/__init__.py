"""The Django admin of download jobs: the job pages and actions (`downloads`), and the
analytics page with the origin's circuit breaker (`analytics`), the callers of the old
endpoint (`legacy`), and the API keys (`api_keys`). Importing the package registers them,
as the admin's autodiscovery does."""

from jobs.admin import api_keys, downloads, legacy  # noqa: F401
