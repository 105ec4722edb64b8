import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from knox.models import AbstractAuthToken
from knox.settings import CONSTANTS as KNOX_CONSTANTS


def new_job_id() -> str:
    """`job_` + 32 hex characters (128 bits) from the OS CSPRNG: unguessable."""
    return f"job_{secrets.token_hex(16)}"


class Status(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Priority(models.TextChoices):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


ACTIVE_STATUSES = (Status.QUEUED, Status.PROCESSING)
TERMINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)

# The one table of allowed state changes. Services refuse anything else.
#   queued -> queued: a job the origin's limits or breaker hold back waits again, its
#     attempts untouched.
#   processing -> processing: a redelivered task restarts a job whose worker died.
#   processing -> queued: a retryable failure waits for its next attempt.
#   failed/cancelled -> queued: an operator retries the job.
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.QUEUED: frozenset({Status.QUEUED, Status.PROCESSING, Status.CANCELLED, Status.FAILED}),
    Status.PROCESSING: frozenset(
        {Status.PROCESSING, Status.QUEUED, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset({Status.EXPIRED}),
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.CANCELLED: frozenset({Status.QUEUED}),
    Status.EXPIRED: frozenset(),
}


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS[from_status]


class DownloadJob(models.Model):
    job_id = models.CharField(max_length=50, unique=True, default=new_job_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="download_jobs"
    )
    file_id = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)

    progress = models.PositiveSmallIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(null=True, blank=True)

    # `attempts` counts started attempts and doubles as the fencing token of the running
    # one: a worker writes only while the row still carries its attempt number.
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # The running attempt's heartbeat and the parts it stored live in hot-state Redis
    # (hotstate.run_beat), fenced by this number: the row is written a fixed number of
    # times per job, whatever the file's size or the attempt's length.
    # The Celery task id of the message running the current attempt: a redelivery of that
    # same message may restart the attempt, any other message (a duplicate) may not.
    task_id = models.CharField(max_length=255, blank=True)
    dead_lettered_at = models.DateTimeField(null=True, blank=True)
    # Raised by one with every write of the row (services/writes.py): the hot copy of the row in
    # Redis (hotstate.JobCard) is replaced only by a copy of a higher version, so copies
    # that arrive out of order never bring back an older state.
    version = models.PositiveBigIntegerField(default=1)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the stored file is deleted.")

    storage_key = models.CharField(max_length=500, blank=True)
    # The in-flight upload; the parts stored in it are recorded in Redis, for a later
    # attempt to resume after the last of them.
    upload_id = models.CharField(max_length=500, blank=True, help_text="In-flight multipart upload.")
    # Identifies the origin's version of the file (ETag, Last-Modified...) so a resumed
    # attempt asks for the rest of the same file, never splices two versions.
    origin_validator = models.CharField(max_length=255, blank=True)
    resumed_bytes = models.BigIntegerField(
        default=0, help_text="Bytes the completing attempt took from parts stored by earlier attempts."
    )
    reused_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reused_by",
        help_text="Completed at once from this job's stored file, with no origin traffic.",
    )
    file_name = models.CharField(max_length=255, blank=True)
    file_size_bytes = models.BigIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)

    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    error_retryable = models.BooleanField(null=True, blank=True)

    metadata = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    # The one webhook endpoint the job's end is sent to (its public id, read by the
    # webhooks app); blank: every endpoint of the owner subscribed to the event.
    webhook_id = models.CharField(max_length=40, blank=True)

    class Meta:
        indexes = (
            models.Index(fields=["owner", "-created_at"], name="idx_owner_created"),
            models.Index(fields=["status", "-created_at"], name="idx_status_created"),
            # Reuse looks for a retained file of the same file id.
            models.Index(fields=["file_id", "status"], name="idx_file_status"),
        )
        constraints = (
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="uniq_owner_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(progress__lte=100), name="progress_at_most_100"),
            models.CheckConstraint(condition=Q(file_id__gt=0), name="file_id_positive"),
        )

    def __str__(self) -> str:
        return self.job_id

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def due_since(self) -> datetime | None:
        """While the job is queued, since when its next attempt has been due, the start of
        its wait for a worker: the time its retry (or the circuit breaker) set; else its
        creation, before a first attempt; else its last change, when the reaper or an
        operator queued it again. None when it is not queued."""
        if self.status != Status.QUEUED:
            return None
        if self.next_retry_at is not None:
            return self.next_retry_at
        return self.created_at if self.attempts == 0 else self.updated_at


class DownloadAnalyticsHour(models.Model):
    """One hour of the `download_analytics` materialized view (PostgreSQL only; made by
    migration 0003, refreshed by beat). Read-only: Django never creates or writes it."""

    hour = models.DateTimeField(primary_key=True)
    total_jobs = models.BigIntegerField()
    completed = models.BigIntegerField()
    failed = models.BigIntegerField()
    cancelled = models.BigIntegerField()
    avg_duration_s = models.FloatField(null=True)
    p50_duration_s = models.FloatField(null=True)
    p95_duration_s = models.FloatField(null=True)
    p99_duration_s = models.FloatField(null=True)
    # Sizes of the files of completed jobs, written to storage (not bytes downloaded).
    bytes_staged = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "download_analytics"
        ordering = ["-hour"]  # noqa: RUF012 (as the migration states it: a tuple would be a change)

    def __str__(self) -> str:
        return self.hour.isoformat()


class ApiKey(AbstractAuthToken):
    """An API key (`Authorization: Token <key>`), as django-rest-knox stores one: the key's
    digest and its first characters (`token_key`, enough to tell keys apart in a list),
    never the key itself, which is shown once, when it is made (jobs/api_keys.py).

    knox's own row keys on the digest; this one has a plain id, so that the admin's URLs
    and any reference to a key (a WebSocket ticket's claims) carry no digest either.
    """

    id = models.BigAutoField(primary_key=True)
    digest = models.CharField(max_length=KNOX_CONSTANTS.DIGEST_LENGTH, unique=True)
    name = models.CharField(
        max_length=100, blank=True, help_text="What the key is for, e.g. the client using it."
    )
    # Written when the database is asked for the key, at most once a TOKEN_CACHE_TTL_S:
    # a cached key is used without a write.
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def __str__(self) -> str:
        return f"{self.token_key}… ({self.name or 'unnamed'})"
