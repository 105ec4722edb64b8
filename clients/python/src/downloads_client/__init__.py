"""Client of the download service: `Client(base_url, token).download(file_id, path)`.

See README.md beside this package for the library and the `downloads` command.
"""

from .client import VERSION, Client, ProgressCallback
from .errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    DownloadExpired,
    IntegrityError,
    JobAlreadyFinished,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobNotReady,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthenticated,
    ValidationError,
    WaitTimeout,
)
from .models import DownloadResult, Job, JobError, JobStatus, Link, Priority, Progress
from .webhooks import Webhook, WebhookDelivery, WebhookVerificationError, verify_webhook

__version__ = VERSION
__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DownloadExpired",
    "DownloadResult",
    "IntegrityError",
    "Job",
    "JobAlreadyFinished",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobNotReady",
    "JobStatus",
    "Link",
    "NotFound",
    "PermissionDenied",
    "Priority",
    "Progress",
    "ProgressCallback",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "Unauthenticated",
    "ValidationError",
    "WaitTimeout",
    "Webhook",
    "WebhookDelivery",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
