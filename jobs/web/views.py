from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from jobs.models import Priority


@login_required
@ensure_csrf_cookie
def downloads_page(request: HttpRequest) -> HttpResponse:
    """The end-user page. Its script calls the `/v1/` API with the session cookie, so the
    CSRF cookie must exist for the POST and DELETE requests it makes."""
    return render(
        request,
        "jobs/downloads.html",
        {
            "priorities": Priority.choices,
            "default_priority": Priority.NORMAL,
            "polling_interval_ms": settings.JOB_POLLING_INTERVAL_MS,
        },
    )
