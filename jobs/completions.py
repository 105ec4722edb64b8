"""Recent completions, in hot-state Redis: what the estimate of a new job's wait is made of
(jobs/selectors.py).

Each staged completion adds itself, and its duration, to the bucket of COMPLETIONS_BUCKET_S
in which it completed: `completions:<bucket>`, a hash of `n` (jobs) and `s` (their
durations summed, seconds), expiring once it has left JOB_ESTIMATE_WINDOW_S. Reading the
window is one round trip whatever the load, and a bucket holds two numbers however many
jobs complete in it. Jobs completed at once from a stored file are not counted: they take
no worker's time.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from infra.redis import state_client

if TYPE_CHECKING:
    from jobs.models import DownloadJob

COMPLETIONS_BUCKET_S = 5


@dataclass(frozen=True)
class RecentCompletions:
    """The jobs completed within a window that ends now."""

    count: int
    seconds: float  # their durations, summed
    first_bucket_s: float | None  # the start of the oldest bucket that counted one (Unix time)


def _completions_key(bucket: int) -> str:
    return f"completions:{bucket}"


def completion_record(job: "DownloadJob") -> None:
    """Counts the job's completion (it has completed_at and duration_seconds) in its bucket."""
    if job.completed_at is None or job.duration_seconds is None:
        return
    key = _completions_key(int(job.completed_at.timestamp() // COMPLETIONS_BUCKET_S))
    pipe = state_client().pipeline(transaction=False)
    pipe.hincrby(key, "n", 1)
    pipe.hincrbyfloat(key, "s", job.duration_seconds)
    pipe.expire(key, settings.JOB_ESTIMATE_WINDOW_S + 2 * COMPLETIONS_BUCKET_S)
    pipe.execute()


def completions_read(*, now_s: float) -> RecentCompletions:
    """The completions of the buckets within JOB_ESTIMATE_WINDOW_S before `now_s`, the
    current bucket included, in one round trip."""
    last = int(now_s // COMPLETIONS_BUCKET_S)
    buckets = range(last - int(settings.JOB_ESTIMATE_WINDOW_S // COMPLETIONS_BUCKET_S) + 1, last + 1)
    pipe = state_client().pipeline(transaction=False)
    for bucket in buckets:
        pipe.hmget(_completions_key(bucket), "n", "s")
    count, seconds, first = 0, 0.0, None
    for bucket, (n, s) in zip(buckets, pipe.execute(), strict=True):
        if n is not None and int(n) > 0:
            count += int(n)
            seconds += float(s or 0)
            first = bucket * COMPLETIONS_BUCKET_S if first is None else first
    return RecentCompletions(count=count, seconds=seconds, first_bucket_s=first)


def completions_reset() -> None:
    """Forgets every recorded completion (tests start from none)."""
    keys = list(state_client().scan_iter(match="completions:*", count=1000))
    if keys:
        state_client().delete(*keys)
