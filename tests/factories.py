"""Rows as tests need them."""

import time
from typing import Any

from django.contrib.auth.models import User
from knox.crypto import hash_token

from infra.redis import state_client
from jobs import hotstate
from jobs.api_keys import api_key_create
from jobs.models import DownloadJob
from jobs.parts import StoredPart


def api_key_for(user: User, *, name: str = "") -> str:
    """A new API key of `user`, for `Authorization: Token <key>`."""
    return api_key_create(user=user, name=name)[1]


def key_digest(key: str) -> str:
    """The digest its row holds: `owner__auth_token_set__digest=key_digest(key)` finds a
    key's jobs."""
    return str(hash_token(key))


def make_job(owner: User, **fields: Any) -> DownloadJob:
    """A job of `owner`, queued on file 70000 with three attempts unless `fields` say
    otherwise, written straight to the table (no service, no dispatch)."""
    fields.setdefault("file_id", 70000)
    fields.setdefault("max_attempts", 3)
    return DownloadJob.objects.create(owner=owner, **fields)


def beat(job: DownloadJob, *, seconds_ago: float, attempt: int | None = None) -> None:
    """Writes the heartbeat of the job's attempt (its current one unless `attempt` says
    otherwise) as sent `seconds_ago`, as a worker that went silent then left it."""
    attempt = job.attempts if attempt is None else attempt
    assert hotstate.run_beat(job.job_id, attempt=attempt)
    state_client().hset(f"job:{job.job_id}:run", "beat", f"{time.time() - seconds_ago:.3f}")


def recorded_parts(job: DownloadJob) -> tuple[StoredPart, ...]:
    """The parts recorded for the job's next attempt to resume after (none once it ended)."""
    state = hotstate.run_read(job.job_id)
    return state.parts if state is not None else ()


def row_writes(job: DownloadJob) -> int:
    """How many times the job's row was written, its insert included: the insert sets its
    version to 1 and every write raises it by one."""
    return DownloadJob.objects.values_list("version", flat=True).get(pk=job.pk)
