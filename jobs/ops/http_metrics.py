"""`download_http_requests_total{view,method,code}` and
`download_http_request_duration_seconds{view}` of every HTTP request a web process answers.

Outermost in MIDDLEWARE, so that what the other middleware answers (a CORS preflight, a
503 of a dependency's fault, a refused sign-in) is counted too. `view` is the URL name the
request resolved to (a bounded set, as the routes are), "unmatched" for a path no route
takes. The method is one of the usual ones or "other": a client cannot grow the series.
A web process's database pool figures are copied into its metrics here as well, at most
once a second (jobs/ops/db_pool.py)."""

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from jobs import metrics
from jobs.ops.db_pool import WEB, db_pool_refresh

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
POOL_COPY_EVERY_S = 1.0


def request_view(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.url_name or UNMATCHED) if match is not None else UNMATCHED


def request_observe(request: HttpRequest, response: HttpResponseBase, *, started: float) -> None:
    view = request_view(request)
    method = request.method if request.method in METHODS else "other"
    metrics.http_requests.labels(view=view, method=method, code=str(response.status_code)).inc()
    metrics.http_request_duration.labels(view=view).observe(time.perf_counter() - started)
    db_pool_refresh(WEB, at_most_every_s=POOL_COPY_EVERY_S)


class HttpMetricsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        request_observe(request, response, started=started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        assert not isinstance(response, HttpResponseBase)
        answered = await response
        request_observe(request, answered, started=started)
        return answered
