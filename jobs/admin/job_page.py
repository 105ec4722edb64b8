"""A job's admin page: its history of attempts (read-only), and the Retry and Cancel
buttons, which call the same services as the list's actions and the API, for staff with
the change permission on jobs."""

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.admin.display import human_bytes
from jobs.models import ACTIVE_STATUSES, DownloadJob, JobAttempt, Status

RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED)


class JobAttemptInline(admin.TabularInline):
    """What each attempt did: written by the worker, never edited here."""

    model = JobAttempt
    verbose_name = "attempt"
    verbose_name_plural = "attempts"
    fields = ("number", "started", "ended", "outcome", "error_code", "bytes_shown", "worker")
    readonly_fields = fields
    ordering = ("-number",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see the job may see its attempts.
        return request.user.has_perm("jobs.view_downloadjob")

    @admin.display(description="started")
    def started(self, attempt: JobAttempt) -> str:
        return _moment(attempt.started_at)

    @admin.display(description="ended")
    def ended(self, attempt: JobAttempt) -> str:
        return _moment(attempt.ended_at) if attempt.ended_at else "-"

    @admin.display(description="bytes")
    def bytes_shown(self, attempt: JobAttempt) -> str:
        return human_bytes(attempt.bytes_done)


def _moment(at: datetime) -> str:
    return timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S")


def job_buttons(
    request: HttpRequest, model_admin: "admin.ModelAdmin[Any]", job: DownloadJob
) -> dict[str, bool]:
    """Which buttons the job's page shows: none to staff who may only view jobs."""
    allowed = model_admin.has_change_permission(request)
    return {
        "can_cancel": allowed and job.status in ACTIVE_STATUSES,
        "can_retry": allowed and job.status in RETRYABLE_STATUSES,
    }


def job_action(
    request: HttpRequest, model_admin: "admin.ModelAdmin[Any]", object_id: str, action: str
) -> HttpResponseRedirect:
    """POST: cancels or retries the job, then back to its page with what happened."""
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    job = DownloadJob.objects.filter(pk=object_id).first() if object_id.isdigit() else None
    if job is None:
        raise Http404("No such job")
    try:
        if action == "cancel":
            services.download_job_cancel(job=job)
            model_admin.message_user(request, f"Cancelled {job.job_id}.", messages.SUCCESS)
        else:
            services.download_job_retry(job=job)
            model_admin.message_user(request, f"Queued {job.job_id} again.", messages.SUCCESS)
    except (services.InvalidTransition, services.JobStateConflict):
        job.refresh_from_db(fields=["status"])
        model_admin.message_user(
            request, f"Refused: {job.job_id} is {job.status}, which does not allow it.", messages.WARNING
        )
    return HttpResponseRedirect(reverse("admin:jobs_downloadjob_change", args=[job.pk]))
