"""Writes: every change of a download job's state happens in this package, one module a
family of actions: `create` (initiate), `actions` (cancel, retry), `attempt` and
`attempt_end` (the worker's attempt, and how it ends, with `attempt_hooks`: what it
reports as it runs), `maintenance` (beat's retention, purge and reaper), all through the
one compare-and-swap of `writes`; `stored_files` names the key an attempt writes and
aborts the uploads left behind.
"""

from jobs.services.actions import NotDeadLettered, download_job_cancel, download_job_retry
from jobs.services.attempt import download_job_run, download_job_start
from jobs.services.attempt_end import download_job_complete, retry_delay_s
from jobs.services.create import ActiveLimitExceeded, download_job_create
from jobs.services.maintenance import download_jobs_expire, download_jobs_purge, download_jobs_reap
from jobs.services.writes import InvalidTransition, JobStateConflict

__all__ = [
    "ActiveLimitExceeded",
    "InvalidTransition",
    "JobStateConflict",
    "NotDeadLettered",
    "download_job_cancel",
    "download_job_complete",
    "download_job_create",
    "download_job_retry",
    "download_job_run",
    "download_job_start",
    "download_jobs_expire",
    "download_jobs_purge",
    "download_jobs_reap",
    "retry_delay_s",
]
