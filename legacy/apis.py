"""`POST /download/start`, the old synchronous endpoint (legacy/policy.py), on the new pipeline.

It takes what initiate takes (the same authentication, validation, limits and
`Idempotency-Key`) and creates the job the same way, through initiate's own
`job_initiate` (jobs/api/views.py). Then:

- retired (`LEGACY_ENABLED=false`, or past `LEGACY_SUNSET_AT`): 410 `ENDPOINT_RETIRED`;
- the job already finished (a retained file reused at once): 302 to a fresh download URL;
  failed or cancelled: the error of `GET /v1/download/{job_id}`;
- a caller in `LEGACY_ASYNC_PERCENT`, or no ASGI wait in front of this view: 202 with
  `Location: /v1/download/status/{job_id}`, `Retry-After` and initiate's body;
- otherwise the view answers the ASGI wait (legacy/wait.py), which waits
  for the job without a thread, at most `LEGACY_WAIT_S`, and then asks
  `GET /download/start/{job_id}` (`LegacyDownloadResultApi`) for the answer: 302, the
  error, or the 202 if it is still running.

Every answer carries the deprecation headers and is counted (legacy/policy.py).
"""

import math
from typing import Any

from django.conf import settings
from django.http import HttpResponseRedirect
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import selectors
from jobs.api.errors import ApiError
from jobs.api.views import DownloadJobInitiateApi, initiate_answer_data, job_not_collectable, ok, owned_job
from jobs.models import DownloadJob, Status
from legacy import openapi as legacy_openapi
from legacy import policy

# Set on the request by the ASGI wait (and removed from any client's request first): the
# view may hand the wait over. Answered with the job's id in the response header of the
# same name, which the ASGI wait removes before anything reaches the client.
WAIT_HEADER = "X-Downloads-Legacy-Wait"


class _LegacyAnswers:
    """What both halves of the old endpoint answer, with the deprecation headers and the
    count of every answer (on each response the view finalizes, errors included). Mixed in
    before a DRF view."""

    legacy_outcome: str | None = None

    def legacy_counted(self, request: Request) -> bool:
        return True

    def legacy_answer(
        self, request: Request, job: DownloadJob, *, may_wait: bool
    ) -> Response | HttpResponseRedirect:
        if job.status == Status.COMPLETED:
            self.legacy_outcome = policy.REDIRECTED
            link = selectors.download_job_link(job=job)
            return HttpResponseRedirect(request.build_absolute_uri(link["download_url"]))
        if not job.is_active:
            self.legacy_outcome = policy.FAILED
            raise job_not_collectable(job)  # the error the new API answers for it
        moved = policy.moved_at_once(request.user.pk)  # type: ignore[arg-type]
        if may_wait and not moved:
            response = self._accepted(request, job)
            # No outcome yet: the answer after the wait has it. The owner's id bounds the
            # user's waits.
            response[WAIT_HEADER] = f"{job.job_id} {job.owner_id}"
            return response
        self.legacy_outcome = policy.MOVED if moved else policy.ACCEPTED
        return self._accepted(request, job)

    def _accepted(self, request: Request, job: DownloadJob) -> Response:
        """202: the job runs on; the client moves on to the new flow with this body."""
        response = ok(initiate_answer_data(request, job), status_code=status.HTTP_202_ACCEPTED)
        response["Location"] = reverse("download-job-status", kwargs={"job_id": job.job_id})
        response["Retry-After"] = str(max(1, math.ceil(settings.JOB_POLLING_INTERVAL_MS / 1000)))
        return response

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        self._legacy_finalize(request, response)
        return response

    def _legacy_finalize(self, request: Request, response: Any) -> None:
        for name, value in policy.deprecation_headers().items():
            response[name] = value
        if response.has_header(WAIT_HEADER) or not self.legacy_counted(request):
            return
        outcome = self.legacy_outcome
        if outcome is None:
            outcome = policy.GONE if response.status_code == status.HTTP_410_GONE else policy.REFUSED
        user = getattr(request, "user", None)
        policy.legacy_request_record(
            user_id=user.pk if user is not None and user.is_authenticated else None,
            user_agent=request.headers.get("User-Agent", ""),
            outcome=outcome,
        )


class LegacyDownloadStartApi(_LegacyAnswers, DownloadJobInitiateApi):
    """The old synchronous endpoint: deprecated, see docs/api.md "Migrating from POST
    /download/start"."""

    # A replay runs a whole wait again: it is counted against the initiate rate like a
    # new request (initiate's own replays are not: they answer at once).
    replays_rate_limited = True

    # Described in the OpenAPI description as deprecated, with its sunset (legacy/openapi.py).
    @extend_schema(**legacy_openapi.DOWNLOAD_START)
    def post(self, request: Request) -> Any:  # a Response, or the redirect to the file
        if policy.retired():
            raise ApiError(
                status_code=status.HTTP_410_GONE,
                code="ENDPOINT_RETIRED",
                message=f"POST /download/start was retired: use POST {policy.SUCCESSOR_PATH}",
                extra={"successor": policy.SUCCESSOR_PATH, "documentation": settings.LEGACY_MIGRATION_URL},
            )
        job = self.job_initiate(request)
        return self.legacy_answer(request, job, may_wait=bool(request.headers.get(WAIT_HEADER)))


class LegacyDownloadResultApi(_LegacyAnswers, APIView):
    """The second half of the old endpoint: its answer once the wait is over."""

    def legacy_counted(self, request: Request) -> bool:
        """Only the ASGI wait's own request (the marker, which no client can send) is a
        call of the old endpoint. Anything else that reaches this path, such as a page of
        another site sending a signed-in browser here, is answered but not counted."""
        return bool(request.headers.get(WAIT_HEADER))

    @extend_schema(exclude=True)  # the ASGI wait's own request, not an endpoint of clients
    def get(self, request: Request, job_id: str) -> Any:
        return self.legacy_answer(request, owned_job(request, job_id), may_wait=False)
