"""Endpoints for operators and orchestrators: liveness, readiness and Prometheus metrics.

`/health` says the process answers, and touches nothing (a liveness probe that checked
the database would restart every web process when the database blips). `/ready` checks
what a request needs: the database, the Redis servers (broker, hot state, channel layer)
and the downloads storage, each with a short timeout; 503 names what failed. The answer
says only which check failed: the error itself (host names, users) goes to the log.
`/ready` and `/metrics` are for the orchestrator and Prometheus, not the public edge.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from jobs.ops import scrape
from jobs.ops.checks import check_run, database_check, database_pool, redis_check, redis_urls, storage_check


@require_GET
@never_cache
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# /ready's names of the Redis checks (docs/operations.md).
READY_REDIS_NAMES = {"broker": "redis_broker", "hotstate": "redis_state", "channels": "redis_channels"}


@require_GET
@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": check_run("database", database_check)}
    for role, url in redis_urls().items():
        name = READY_REDIS_NAMES[role]
        checks[name] = check_run(name, redis_check, url)
    checks["storage"] = check_run("storage", storage_check)
    failed = sorted(name for name, result in checks.items() if result != "ok")
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    if (pool := database_pool()) is not None:
        body["database_pool"] = {name: pool[name] for name in ("max", "open", "idle", "waiting", "timeouts")}
    return JsonResponse(body, status=503 if failed else 200)


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = scrape.exposition()
    return HttpResponse(body, content_type=content_type)


# The probes' paths, answered whatever the Host header says: the orchestrator and
# Prometheus reach a web process by its address (a pod's IP, `web:8000`), which
# DJANGO_ALLOWED_HOSTS does not and should not list. Nothing in these answers is built
# from the Host, so it cannot poison them; every other path still gets Django's 400.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ProbesAnyHostMiddleware:
    """Answers `/health`, `/ready` and `/metrics` before any middleware that validates the
    Host (SecurityMiddleware, CommonMiddleware, CSRF) could refuse it."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in PROBE_PATHS:
            response: HttpResponse = self.get_response(request)
            return response
        match = resolve(request.path_info)
        request.resolver_match = match
        answer: HttpResponse = match.func(request, *match.args, **match.kwargs)
        return answer
