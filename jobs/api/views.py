"""The REST API of docs/api.md: each view parses, calls a service or selector, and answers in
the envelope `{"success": true, "data": ...}`. Errors are shaped by `api_errors`."""

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import selectors, services
from jobs.api import openapi, ratelimits
from jobs.api.errors import ApiError, error_body, job_not_found
from jobs.api.serializers import (
    DownloadJobInitiateSerializer,
    DownloadJobListFilterSerializer,
    idempotency_key_validate,
)
from jobs.client_address import client_ip
from jobs.models import ACTIVE_STATUSES, ApiKey, DownloadJob, Status
from jobs.signals import job_initiating
from jobs.tickets import websocket_ticket_mint


def ok(data: Any, *, status_code: int = status.HTTP_200_OK) -> Response:
    return Response({"success": True, "data": data}, status=status_code)


def _websocket_url(request: Request, job_id: str) -> str:
    """The job's socket on the request's own host and scheme, with a ticket that opens it
    for WEBSOCKET_TICKET_TTL_S (jobs/tickets.py): no credential in a URL that proxies log."""
    scheme = "wss" if request.is_secure() else "ws"
    path = reverse("download-job-subscribe", kwargs={"job_id": job_id})
    # A request made with an API key binds the ticket to the key: deleting it revokes both.
    api_key_id = request.auth.pk if isinstance(request.auth, ApiKey) else None
    ticket = websocket_ticket_mint(user_id=request.user.pk, job_id=job_id, api_key_id=api_key_id)  # type: ignore[arg-type]
    return f"{scheme}://{request.get_host()}{path}?{urlencode({'ticket': ticket})}"


def owned_job(request: Request, job_id: str) -> DownloadJob:
    """The caller's job, or the 404 `JOB_NOT_FOUND` (another user's job is not found either)."""
    try:
        return selectors.download_job_get_for_owner(owner=request.user, job_id=job_id)  # type: ignore[arg-type]
    except DownloadJob.DoesNotExist:
        raise job_not_found() from None


def initiate_answer_data(request: Request, job: DownloadJob) -> dict[str, Any]:
    """The `data` of initiate's answer: the job, when to poll it, its socket. Built here
    only, for every answer that hands a client over to the new flow with its job."""
    return {
        "job_id": job.job_id,
        "status": job.status,
        "estimated_time": selectors.download_job_estimate_s(job=job),
        "polling_interval": settings.JOB_POLLING_INTERVAL_MS,
        "websocket_url": _websocket_url(request, job.job_id),
    }


# A view that takes what initiate takes and answers otherwise subclasses it and calls
# `job_initiate`: the same authentication, validation, limits and `Idempotency-Key`, and
# the same rate-limit headers on every answer. (A comment, not a docstring: the OpenAPI
# description would show it.)
class DownloadJobInitiateApi(APIView):
    # A replay (a client retrying after a lost answer) creates nothing and is answered
    # with its job at once: not counted against the initiate rate unless a subclass that
    # does more per replay says so.
    replays_rate_limited = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Set per request by the rate limits; every answer carries them, errors included.
        self.ratelimit_headers: dict[str, str] = {}

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        for name, value in self.ratelimit_headers.items():
            response[name] = value
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        operation_id="download_job_initiate",
        summary="Start a download job",
        request=DownloadJobInitiateSerializer,
        parameters=[openapi.IDEMPOTENCY_KEY, *openapi.RATE_LIMIT_HEADERS],
        responses={
            200: openapi.INITIATE_OK,
            400: openapi.INITIATE_BAD_REQUEST,
            **openapi.UNSAFE_AUTH_ERRORS,
            415: openapi.UNSUPPORTED_MEDIA_TYPE,
            429: openapi.RATE_LIMIT_EXCEEDED,
        },
    )
    def post(self, request: Request) -> Response:
        return ok(initiate_answer_data(request, self.job_initiate(request)))

    def job_initiate(self, request: Request) -> DownloadJob:
        """The job of this request: the one its `Idempotency-Key` already made (a replay),
        or a new one once the request is within the rates and valid. Raises the API's
        errors (400, 429)."""
        idempotency_key = idempotency_key_validate(request.headers.get("Idempotency-Key"))
        if idempotency_key and (
            replayed := selectors.download_job_for_idempotency_key(owner=request.user, key=idempotency_key)  # type: ignore[arg-type]
        ):
            if self.replays_rate_limited:
                self._rate_limit(request)
            return replayed
        self._rate_limit(request)
        serializer = DownloadJobInitiateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        notify = serializer.validated_data.get("notify")
        if notify is not None:
            notify = list(dict.fromkeys(notify))  # each once, in order
            if "email" in notify and not request.user.email:  # type: ignore[union-attr]
                raise ApiError(
                    status_code=status.HTTP_400_BAD_REQUEST,
                    code="EMAIL_MISSING",
                    message="Your account has no e-mail address to notify",
                )
        job_initiating.send(sender=DownloadJob, owner=request.user, data=serializer.validated_data)
        try:
            job, _created = services.download_job_create(
                owner=request.user,  # type: ignore[arg-type]
                file_id=serializer.validated_data["file_id"],
                priority=serializer.validated_data["priority"],
                metadata=serializer.validated_data["metadata"],
                idempotency_key=idempotency_key,
                notify=notify,
                webhook_id=serializer.validated_data["webhook_id"],
            )
        except services.ActiveLimitExceeded as exc:
            retry_after = settings.JOB_ACTIVE_LIMIT_RETRY_AFTER_S
            raise ApiError(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                code="RATE_LIMIT_EXCEEDED",
                message=str(exc),
                extra={"retry_after": retry_after},
                headers={"Retry-After": str(retry_after)},
            ) from None
        return job

    def _rate_limit(self, request: Request) -> None:
        verdict = ratelimits.initiate_rate_hit(
            user_id=request.user.pk,  # type: ignore[arg-type]
            ip=client_ip(request),
        )
        self.ratelimit_headers = verdict.headers
        if not verdict.allowed:
            raise ApiError(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                code="RATE_LIMIT_EXCEEDED",
                message="Too many download requests",
                extra={"retry_after": verdict.retry_after_s},
                headers={"Retry-After": str(verdict.retry_after_s)},
            )


class DownloadJobStatusApi(APIView):
    @extend_schema(
        operation_id="download_job_status",
        summary="A job's status and progress",
        parameters=[openapi.JOB_ID],
        responses={200: openapi.STATUS_OK, **openapi.AUTH_ERRORS, 404: openapi.JOB_NOT_FOUND},
    )
    def get(self, request: Request, job_id: str) -> Response:
        # The hot path of polling: the job's card from Redis, no database query.
        try:
            card, hot = selectors.download_job_card_for_owner(owner_id=request.user.pk, job_id=job_id)  # type: ignore[arg-type]
        except DownloadJob.DoesNotExist:
            raise job_not_found() from None
        data = selectors.download_job_status(job=card, hot=hot)
        data.update(selectors.download_job_queue_place(job=card))
        if data["status"] in ACTIVE_STATUSES:
            # A fresh ticket: the one of initiate's websocket_url may be past its TTL by the
            # time a client reconnects.
            data = {**data, "websocket_url": _websocket_url(request, job_id)}
        return ok(data)


def job_not_collectable(job: DownloadJob) -> ApiError:
    """Why a job that is not completed has no file to collect (the old endpoint answers
    the same)."""
    if job.status == Status.EXPIRED:
        return ApiError(
            status_code=status.HTTP_410_GONE,
            code="DOWNLOAD_EXPIRED",
            message="The file was deleted after its retention period; start a new download",
        )
    if job.is_active:
        message = f"Download not ready yet. Current status: {job.status}"
        return ApiError(status_code=status.HTTP_404_NOT_FOUND, code="JOB_NOT_READY", message=message)
    return ApiError(
        status_code=status.HTTP_409_CONFLICT,
        code="JOB_NOT_READY",
        message=f"Download will not be ready: the job is {job.status}",
        extra={"status": job.status},
    )


class DownloadJobApi(APIView):
    """GET collects a completed job's file as a fresh presigned URL; DELETE cancels."""

    @extend_schema(
        operation_id="download_job_collect",
        summary="A fresh download link of a completed job's file",
        parameters=[openapi.JOB_ID],
        responses={
            200: openapi.LINK_OK,
            **openapi.AUTH_ERRORS,
            404: openapi.JOB_NOT_FOUND_OR_NOT_READY,
            409: openapi.JOB_WILL_NOT_BE_READY,
            410: openapi.DOWNLOAD_EXPIRED,
        },
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = owned_job(request, job_id)
        if job.status == Status.COMPLETED:
            link = selectors.download_job_link(job=job)
            link["download_url"] = request.build_absolute_uri(link["download_url"])
            return ok(link)
        raise job_not_collectable(job)

    @extend_schema(
        operation_id="download_job_cancel",
        summary="Cancel a queued or processing job",
        parameters=[openapi.JOB_ID],
        responses={
            200: openapi.CANCEL_OK,
            **openapi.UNSAFE_AUTH_ERRORS,
            404: openapi.JOB_NOT_FOUND,
            409: openapi.JOB_ALREADY_FINISHED,
        },
    )
    def delete(self, request: Request, job_id: str) -> Response:
        job = owned_job(request, job_id)
        try:
            services.download_job_cancel(job=job)
        except (services.InvalidTransition, services.JobStateConflict):
            job.refresh_from_db(fields=["status"])
            raise ApiError(
                status_code=status.HTTP_409_CONFLICT,
                code="JOB_ALREADY_FINISHED",
                message=f"Job already finished: {job.status}",
                extra={"status": job.status},
            ) from None
        return Response({"success": True, "message": "Job cancelled successfully"})


class DownloadJobPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF checks a cursor's offset but hands its position to the query unchecked: a
        crafted one that is not an aware timestamp (as DRF writes `created_at`) would
        fail in the ORM as a 500."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                position = parse_datetime(str(cursor.position))  # a string, whatever the stubs say
            except ValueError:
                position = None
            if position is None or position.tzinfo is None:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class DownloadJobListApi(APIView):
    @extend_schema(
        operation_id="download_job_list",
        summary="The caller's jobs, newest first",
        parameters=[DownloadJobListFilterSerializer, *openapi.LIST_PARAMETERS],
        responses={200: openapi.LIST_OK, 400: openapi.VALIDATION_ERROR, **openapi.AUTH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        filters = DownloadJobListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = selectors.download_job_list_for_owner(
            owner=request.user,  # type: ignore[arg-type]
            status=filters.validated_data.get("status"),
        )
        paginator = DownloadJobPagination()
        try:
            page = paginator.paginate_queryset(jobs, request, view=self) or []
        except NotFound:  # DRF's answer to a cursor it did not make: a bad parameter, not a 404
            message = "Invalid cursor: take it from a page's next or previous link."
            raise ValidationError({"cursor": [message]}) from None
        hot = selectors.download_job_hot(page)
        return ok(
            {
                "results": [selectors.download_job_status(job=job, hot=hot.get(job.job_id)) for job in page],
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
            }
        )


def websocket_only(request: HttpRequest, job_id: str) -> JsonResponse:
    """The subscribe URL speaks WebSocket; a plain HTTP request is told so."""
    response = JsonResponse(
        error_body("UPGRADE_REQUIRED", "Connect to this URL with a WebSocket"), status=426
    )
    response["Upgrade"] = "websocket"
    return response
