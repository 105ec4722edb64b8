"""The operators' view of download jobs.

Jobs are created through the API and change state only through the services, so the
admin never writes a row itself: job pages are read-only (a form save would write back
every column it read, over a worker's progress or a cancel that landed meanwhile), jobs
cannot be added or deleted here, and the actions call the same services as the API, one
row at a time, each a compare-and-swap that refuses a row in the wrong state.
"""

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import redis
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from jobs import hotstate, services
from jobs.admin import analytics_page, job_page
from jobs.admin.display import human_bytes
from jobs.models import DownloadJob

ACTION_CHUNK_ROWS = 500
REFUSED_IDS_SHOWN = 10


class DeadLetteredFilter(admin.SimpleListFilter):
    title = "dead-lettered"
    parameter_name = "dead_lettered"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(dead_lettered_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(dead_lettered_at__isnull=True)
        return queryset


def _in_chunks(queryset: QuerySet[DownloadJob]) -> Iterator[DownloadJob]:
    """The selected rows, read a chunk at a time by primary key: the services change the
    rows as we go, so no cursor stays open over the table being written."""
    pks = list(queryset.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(pks), ACTION_CHUNK_ROWS):
        yield from DownloadJob.objects.filter(pk__in=pks[start : start + ACTION_CHUNK_ROWS]).order_by("pk")


@admin.register(DownloadJob)
class DownloadJobAdmin(admin.ModelAdmin):
    # Fits 1280 px beside the filters: a short job id (the whole one is its link's title
    # and its page's), a progress bar with its percent, the created time without the year.
    list_display = (
        "job_short",
        "status",
        "owner",
        "file_id",
        "progress_display",
        "attempts_display",
        "duration_display",
        "created_display",
    )
    list_display_links = ("job_short",)
    list_select_related = ("owner",)
    list_filter = (
        "status",
        "priority",
        DeadLetteredFilter,
        "error_code",
        "created_at",
    )
    search_fields = (
        "job_id__exact",
        "=owner__username",
        "file_id__exact",
    )
    search_help_text = "A job id, a username or a file id."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    show_full_result_count = False
    actions = (
        "cancel_jobs",
        "retry_jobs",
        "requeue_dead_lettered_jobs",
    )
    # What an operator asks first is on top; the technical fields are folded away.
    fieldsets = (
        (
            None,
            {
                "fields": [
                    ("job_id", "status", "priority"),
                    ("owner", "file_id"),
                    ("progress_summary", "attempts_display"),
                    ("created_at", "started_at", "duration_display"),
                    "error_summary",
                ]
            },
        ),
        (
            "Timeline",
            {
                "classes": ["collapse"],
                "fields": [
                    ("updated_at", "next_retry_at"),
                    ("completed_at", "failed_at"),
                    ("dead_lettered_at", "cancelled_at"),
                    "expires_at",
                ],
            },
        ),
        (
            "Stored file",
            {
                "classes": ["collapse"],
                "fields": [
                    ("file_name", "file_size_bytes", "content_type"),
                    "sha256",
                    "storage_key",
                    "upload_id",
                    "running_attempt",
                    ("origin_validator", "resumed_bytes", "reused_from"),
                ],
            },
        ),
        ("Request", {"classes": ["collapse"], "fields": ["idempotency_key", "metadata"]}),
    )
    inlines = (job_page.JobAttemptInline,)
    change_form_template = "admin/jobs/downloadjob/job_page.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DownloadJob | None = None) -> bool:
        # Deleting a row would leave its stored file or in-flight upload behind.
        return False

    def has_change_permission(self, request: HttpRequest, obj: DownloadJob | None = None) -> bool:
        # Job pages are view-only; the change permission is what the actions require.
        return obj is None and super().has_change_permission(request)

    def get_urls(self) -> list[URLPattern]:
        analytics = path(
            "analytics/",
            self.admin_site.admin_view(self.analytics_view),
            name="jobs_downloadjob_analytics",
        )
        breaker_reset = path(
            "analytics/breakers/reset/",
            self.admin_site.admin_view(require_POST(self.breaker_reset_view)),
            name="jobs_downloadjob_breaker_reset",
        )
        job_actions = [
            path(
                f"<path:object_id>/{action}/",
                self.admin_site.admin_view(require_POST(partial(self.job_action_view, action=action))),
                name=f"jobs_downloadjob_{action}",
            )
            for action in ("cancel", "retry")
        ]
        return [analytics, breaker_reset, *job_actions, *super().get_urls()]

    def job_action_view(self, request: HttpRequest, object_id: str, *, action: str) -> HttpResponseRedirect:
        """The job page's Cancel and Retry buttons (POST, CSRF-checked by admin_view)."""
        return job_page.job_action(request, self, object_id, action)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        job = DownloadJob.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        buttons = job_page.job_buttons(request, self, job) if job is not None else {}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **buttons})

    def analytics_view(self, request: HttpRequest) -> TemplateResponse:
        """Hourly analytics and the current queue (staff with view permission on jobs)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return analytics_page.analytics_page(request, self)

    def breaker_reset_view(self, request: HttpRequest) -> HttpResponseRedirect:
        """Closes an origin's circuit breaker (POST, CSRF-checked by admin_view)."""
        return analytics_page.breaker_reset(request, self)

    @admin.display(description="job", ordering="job_id")
    def job_short(self, job: DownloadJob) -> str:
        return format_html('<span title="{}">{}…</span>', job.job_id, job.job_id[:12])

    @admin.display(description="created", ordering="created_at")
    def created_display(self, job: DownloadJob) -> str:
        created = timezone.localtime(job.created_at)
        return format_html(
            '<time datetime="{}">{}</time>', created.isoformat(), created.strftime("%m-%d %H:%M")
        )

    @admin.display(description="progress", ordering="progress")
    def progress_display(self, job: DownloadJob) -> str:
        return format_html(
            '<span class="job-progress"><span class="job-progress-bar" style="width:{}%"></span></span> {} %',
            job.progress,
            job.progress,
        )

    @admin.display(description="progress")
    def progress_summary(self, job: DownloadJob) -> str:
        of = f" of {human_bytes(job.bytes_total)}" if job.bytes_total is not None else ""
        return f"{job.progress} % ({human_bytes(job.bytes_done)}{of})"

    @admin.display(description="error")
    def error_summary(self, job: DownloadJob) -> str:
        if not job.error_code:
            return "-"
        retry = {True: "retryable", False: "not retryable", None: ""}[job.error_retryable]
        return f"{job.error_code}: {job.error_message}" + (f" ({retry})" if retry else "")

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, job: DownloadJob) -> str:
        return f"{job.attempts} / {job.max_attempts}"

    @admin.display(description="running attempt")
    def running_attempt(self, job: DownloadJob) -> str:
        """The attempt's heartbeat and stored parts, from hot-state Redis (not the row)."""
        try:
            state = hotstate.run_read(job.job_id)
        except redis.RedisError:
            return "unknown (Redis cannot be reached)"
        if state is None:
            return "-"
        beat_s = max(0.0, time.time() - state.beat)
        held = "running" if state.live else "ended or fenced off"
        parts = len(state.parts)
        return f"attempt {state.attempt} ({held}), last heartbeat {beat_s:.0f} s ago, {parts} part(s) stored"

    @admin.display(description="duration", ordering="duration_seconds")
    def duration_display(self, job: DownloadJob) -> str:
        return "-" if job.duration_seconds is None else f"{job.duration_seconds:.1f} s"

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[DownloadJob],
        service: Callable[[DownloadJob], object],
        done_verb: str,
    ) -> None:
        done, refused = 0, []
        for job in _in_chunks(queryset):
            try:
                service(job)
            except (services.InvalidTransition, services.JobStateConflict):
                refused.append(job.job_id)
            else:
                done += 1
        if done:
            self.message_user(request, f"{done_verb} {done} job(s).", messages.SUCCESS)
        if refused:
            shown = ", ".join(refused[:REFUSED_IDS_SHOWN])
            more = f" and {len(refused) - REFUSED_IDS_SHOWN} more" if len(refused) > REFUSED_IDS_SHOWN else ""
            self.message_user(
                request,
                f"Refused {len(refused)} job(s) not in a state that allows it: {shown}{more}.",
                messages.WARNING,
            )

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        self._apply(request, queryset, lambda job: services.download_job_cancel(job=job), "Cancelled")

    @admin.action(description="Retry selected failed or cancelled jobs", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        self._apply(request, queryset, lambda job: services.download_job_retry(job=job), "Queued again")

    @admin.action(description="Re-queue selected dead-lettered jobs", permissions=["change"])
    def requeue_dead_lettered_jobs(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        self._apply(
            request,
            queryset,
            lambda job: services.download_job_retry(job=job, dead_lettered_only=True),
            "Queued again",
        )


def download_jobs_changelist_url(user: User) -> str:
    return f"{reverse('admin:jobs_downloadjob_changelist')}?owner__id__exact={user.pk}"


admin.site.unregister(User)


@admin.register(User)
class UserWithDownloadsAdmin(UserAdmin):
    """Django's user admin, with a link from each user to their download history."""

    readonly_fields = (*UserAdmin.readonly_fields, "download_history")

    def get_fieldsets(self, request: HttpRequest, obj: User | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return [*fieldsets, ("Downloads", {"fields": ["download_history"]})]

    @admin.display(description="download history")
    def download_history(self, user: User) -> str:
        return format_html(
            '<a href="{}">{} download job(s)</a>',
            download_jobs_changelist_url(user),
            user.download_jobs.count(),
        )
