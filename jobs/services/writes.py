"""The one way a download job's row is written.

Every write is a compare-and-swap (`UPDATE ... WHERE <the row as the caller read it>`)
through `write`, which raises the row's version and replaces the job's card in hot-state
Redis once the write commits; a change of status goes through `transition`, checked
against the one table of allowed transitions in `models.py`. A worker's writes also
carry its attempt number, so the writes of an attempt that was cancelled or replaced are
refused. Work that must follow a write (dispatching the task, publishing an event) runs
on commit, robustly. A move to an end (completed, failed, cancelled, expired) sends
`jobs.signals.job_finished` inside the write's transaction.
"""

import logging
from collections.abc import Callable
from typing import Any, cast

import redis
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from jobs import hotstate, queues
from jobs.events import job_event_publish
from jobs.hotstate import JobCard
from jobs.models import DownloadJob, can_transition
from jobs.selectors import download_job_card_from_row, download_job_status, iso
from jobs.signals import job_finished_send

logger = logging.getLogger(__name__)


class InvalidTransition(Exception):
    def __init__(self, job: DownloadJob, to_status: str) -> None:
        super().__init__(f"{job.job_id}: {job.status} -> {to_status} is not allowed")
        self.job = job
        self.to_status = to_status


class JobStateConflict(Exception):
    """The row changed under us (another process moved it first)."""


def transition(job: DownloadJob, to_status: str, *, attempt: int | None = None, **fields: Any) -> None:
    """Moves `job` to `to_status` if the row still has the status (and attempt) we read.
    `updated_at` is now unless given (a write whose other fields are reckoned from its
    moment gives that moment)."""
    if not can_transition(job.status, to_status):
        raise InvalidTransition(job, to_status)
    fields.setdefault("updated_at", timezone.now())
    rows = DownloadJob.objects.filter(pk=job.pk, status=job.status)
    if attempt is not None:
        rows = rows.filter(attempts=attempt)
    if not write(rows, job, status=to_status, **fields):
        raise JobStateConflict(f"{job.job_id} is no longer {job.status}")
    job.status = to_status
    for name, value in fields.items():
        setattr(job, name, value)
    job_finished_send(job)


def on_commit(callback: Callable[[], Any]) -> None:
    """Runs `callback` once the transaction commits. Robust: one that fails is logged and
    the others still run (a Redis error at a cancel must not skip the upload's abort), and
    a committed change is never answered as a failure."""
    transaction.on_commit(callback, robust=True)


def hot_on_commit(job_id: str, what: str, action: Callable[[], Any]) -> None:
    """Runs `action`, a write of the job's state in hot-state Redis, once the transaction
    commits. A Redis fault is logged, not raised: the state it would have written is
    written again or read from the row later (a running attempt's next heartbeat, the
    reaper's grace period, the next attempt starting from zero)."""

    def run() -> None:
        try:
            action()
        except redis.RedisError:
            logger.warning("Could not %s of %s (hot-state Redis)", what, job_id, exc_info=True)

    on_commit(run)


def write(rows: QuerySet[DownloadJob], job: DownloadJob, **fields: Any) -> bool:
    """Every write of a job row goes through here: `rows` is the compare-and-swap (the
    row of `job` as the caller expects it). Raises the row's version and, once the write
    commits, replaces the job's card in Redis with the row as this write left it. True if
    the row was written."""
    written = _update_returning_cards(rows, version=F("version") + 1, **fields)
    if len(written) != 1:
        return False
    card_replace_on_commit(job, card=written[0])
    return True


def _update_returning_cards(rows: QuerySet[DownloadJob], **values: Any) -> list[JobCard | None]:
    """`rows.update(**values)`, as one `UPDATE ... RETURNING` of the card's columns: the
    card of each row written, without reading it again (a worker writes a job's row a few
    times and each read would cost as much as the write). Where the database cannot return
    rows from an update, one None per row written: the card is then read from the row.
    Django's own `save()` uses the same compiler path for the fields a database returns."""
    query = cast(UpdateQuery, rows.query.chain(UpdateQuery))
    query.add_update_values(values)
    meta = DownloadJob._meta
    columns = [meta.get_field(name) for name in hotstate.card_fields()]
    with transaction.mark_for_rollback_on_error(using=rows.db):
        returned = query.get_compiler(rows.db).execute_returning_sql(columns)
    names = hotstate.card_fields()
    return [JobCard(**dict(zip(names, row, strict=True))) if row else None for row in returned]


def card_replace_on_commit(job: DownloadJob, *, card: JobCard | None = None) -> None:
    """Drops the job's card now, so that until the write commits a poll reads the row,
    and writes the new one after: `card` (the row as the write left it), else read from
    the committed row. Outside a transaction the write has committed already: nothing to
    drop first. Never fails the caller: a card that could not be written is read from the
    row by the next poll, and a stale one lives at most JOB_CARD_TTL_S (the version check
    keeps out any older copy)."""
    job_id, pk = job.job_id, job.pk
    if connection.in_atomic_block:
        try:
            hotstate.card_forget(job_id)
        except Exception:
            logger.warning("Could not drop the card of %s", job_id, exc_info=True)

    def replace() -> None:
        try:
            written = card if card is not None else download_job_card_from_row(pk=pk)
            if written is not None:
                hotstate.card_write(written)
        except Exception:
            logger.warning("Could not write the card of %s", job_id, exc_info=True)

    on_commit(replace)


def publish_on_commit(job: DownloadJob, event_type: str, **extra: Any) -> None:
    event = {
        **download_job_status(job=job, hot=None),
        "type": event_type,
        "timestamp": iso(timezone.now()),
        **extra,
    }
    on_commit(lambda: job_event_publish(job.job_id, event))


def dispatch_on_commit(job: DownloadJob, *, countdown_s: float = 0) -> None:
    def send() -> None:
        try:
            queues.stage_send(job_pk=job.pk, priority=job.priority, countdown_s=countdown_s)
        except Exception:
            # The row stays queued; the reaper re-dispatches jobs queued for too long.
            logger.exception("Could not dispatch %s to the broker", job.job_id)

    on_commit(send)


def connection_release() -> None:
    """Gives this thread's database connection back to the process's pool, between two of
    a job's writes: a worker runs hundreds of jobs as threads, and each writes its row a
    few times over a minute or two, so they share DATABASE_POOL_MAX_SIZE connections rather
    than hold one each while they wait on the origin. Not inside a transaction; without a
    pool (SQLite) the connection stays with its thread."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()


def progress_forget(job_id: str) -> None:
    """Drops the job's hot progress once its attempt ended. Never fails the caller: one
    left behind by a Redis fault expires on its own (HOT_STATE_TTL_S), and a status answer
    of a job that ended does not read it."""
    try:
        hotstate.progress_clear(job_id)
    except redis.RedisError:
        logger.warning("Could not drop the progress of %s", job_id, exc_info=True)
