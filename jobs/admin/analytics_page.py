"""The admin's operations and analytics page, the operators' overview: the queue per
priority (messages waiting in the broker, as /metrics reads them, and how long the
oldest job has waited), the active jobs, the origins' circuit breakers (with a reset
button for staff who may change jobs), what is failing and why since when, the heaviest
users, and the hourly figures of `jobs.ops.hourly_analytics` as charts (jobs/admin/charts.py)
and as a table that carries every number the charts show."""

import logging
from typing import Any

import redis
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from jobs.admin.charts import bytes_volume_chart, duration_chart, jobs_volume_chart, success_rate_chart
from jobs.admin.display import human_age, human_bytes
from jobs.models import ACTIVE_STATUSES
from jobs.ops import broker, operator_figures, scrape
from jobs.ops.hourly_analytics import download_analytics_hourly, uses_view
from jobs.transfer.breaker import BreakerState, OriginBreaker, breakers_all

logger = logging.getLogger(__name__)

TITLE = "Operations and analytics"


def analytics_page(request: HttpRequest, model_admin: "admin.ModelAdmin[Any]") -> TemplateResponse:
    rows = download_analytics_hourly()
    try:
        depths: dict[str, int] | None = broker.queue_depths()
    except redis.RedisError:
        logger.warning("analytics: could not read the queue depths from the broker", exc_info=True)
        depths = None
    oldest = operator_figures.oldest_queued_age_s()
    active = scrape.active_jobs()
    active_rows = [
        (status, [active[(status, priority)] for priority in broker.PRIORITIES]) for status in ACTIVE_STATUSES
    ]
    charts = (
        [success_rate_chart(rows), duration_chart(rows), jobs_volume_chart(rows), bytes_volume_chart(rows)]
        if rows
        else []
    )
    users = operator_figures.heavy_users()
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": TITLE,
        "rows": rows,
        "table": [(row, human_bytes(row.bytes_staged)) for row in rows],
        "charts": charts,
        "source": "materialized view download_analytics, refreshed every minute"
        if uses_view()
        else "computed from the jobs",
        "priorities": broker.PRIORITIES,
        "depths": [depths[priority] for priority in broker.PRIORITIES] if depths is not None else None,
        "oldest": [human_age(oldest[priority]) for priority in broker.PRIORITIES],
        "active_rows": active_rows,
        "breakers": _breakers(),
        "breaker_window_s": settings.ORIGIN_BREAKER_WINDOW_S,
        "can_reset_breakers": model_admin.has_change_permission(request),
        "failures": operator_figures.failures_by_code(),
        "users": [(usage, human_bytes(usage.bytes_24h), human_bytes(usage.bytes_7d)) for usage in users],
        "changelist_url": reverse("admin:jobs_downloadjob_changelist"),
    }
    return TemplateResponse(request, "admin/jobs/downloadjob/analytics.html", context)


def _breakers() -> list[BreakerState] | None:
    try:
        return breakers_all()
    except redis.RedisError:
        logger.warning("analytics: could not read the circuit breakers from Redis", exc_info=True)
        return None


def breaker_reset(request: HttpRequest, model_admin: "admin.ModelAdmin[Any]") -> HttpResponseRedirect:
    """POST `origin`: closes that origin's circuit breaker and clears its counts (staff with
    the change permission on jobs, as for the job actions)."""
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    name = request.POST.get("origin", "")
    try:
        known = {state.name for state in breakers_all()}
        if name in known:
            OriginBreaker(name).reset()
            model_admin.message_user(request, f"Circuit breaker {name} reset: closed.", messages.SUCCESS)
        else:
            model_admin.message_user(request, f"No circuit breaker {name!r}.", messages.WARNING)
    except redis.RedisError:
        logger.warning("analytics: could not reset the circuit breaker %s", name, exc_info=True)
        model_admin.message_user(request, f"Circuit breaker {name} could not be reset.", messages.ERROR)
    return HttpResponseRedirect(reverse("admin:jobs_downloadjob_analytics") + "#origins-heading")
