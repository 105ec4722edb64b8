"""The Django admin of download jobs: the job pages and actions (`downloads`), the
analytics page with the origin's circuit breaker (`analytics`), and the API keys
(`api_keys`). Importing the package registers them, as the admin's autodiscovery does.
(The callers of the old endpoint have theirs in legacy/admin.py.)"""

from jobs.admin import api_keys, downloads  # noqa: F401
