"""A job's file in storage, as the services name and clean it up: the key an attempt writes
to, and the abort of an upload that no attempt will resume. The row's own writes are
`writes.py`'s; the bytes are moved by `jobs/transfer/`."""

import logging

from django.conf import settings

from jobs.models import DownloadJob
from jobs.transfer.storage import stored_file_delete

logger = logging.getLogger(__name__)


def storage_key_for(job: DownloadJob, *, attempt: int) -> str:
    """Each attempt writes its own key: a late attempt that lost the race to complete
    removes only its own file, never the one the job completed with."""
    return f"{settings.DOWNLOADS_LOCATION}/{job.owner_id}/{job.job_id}-{attempt}"


def upload_abort(key: str, upload_id: str, job_id: str) -> None:
    """Aborts an unfinished upload that no attempt will resume."""
    if not upload_id:
        return
    try:
        stored_file_delete(key, upload_id=upload_id)
    except Exception:
        logger.exception("Could not abort the leftover upload of %s", job_id)
