"""Fixtures of the services' tests: a worker's settings against the real local origin,
storage in a directory of the test's own, and one attempt run as a worker runs it."""

from pathlib import Path
from typing import Any

import pytest

from jobs import services
from jobs.transfer.links import SignedFileSystemStorage
from tests.support.origin_server import OriginServer


@pytest.fixture
def worker_settings(settings: Any, origin: OriginServer) -> Any:
    settings.STAGING_CHUNK_BYTES = 64 * 1024
    settings.JOB_RETRY_JITTER = 0
    settings.JOB_MAX_ATTEMPTS = 3
    return settings


@pytest.fixture
def media(worker_settings: Any, local_storage: SignedFileSystemStorage) -> Path:
    """Local storage in a directory of this test's own."""
    return Path(local_storage.location)


@pytest.fixture
def run_attempt(db: None, django_capture_on_commit_callbacks: Any) -> Any:
    """One attempt as a worker runs it, in the test's transaction; the on-commit work
    (dispatch, events) runs as the attempt returns."""

    def run(job_pk: int, *, breaker: Any = None) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            services.download_job_run(job_pk=job_pk, breaker=breaker)

    return run
