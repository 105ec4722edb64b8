"""The REST API of API.md: each view parses, calls a service or selector, and answers in
the envelope `{"success": true, "data": ...}`. Errors are shaped by `api_errors`."""

from typing import Any

from django.conf import settings
from django.urls import reverse
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import ratelimits, selectors, services
from .api_errors import ApiError, job_not_found
from .models import DownloadJob, Status
from .serializers import (
    DownloadJobInitiateSerializer,
    DownloadJobListFilterSerializer,
    idempotency_key_validate,
)


def ok(data: Any, *, status_code: int = status.HTTP_200_OK) -> Response:
    return Response({"success": True, "data": data}, status=status_code)


def _owned_job(request: Request, job_id: str) -> DownloadJob:
    try:
        return selectors.download_job_get_for_owner(owner=request.user, job_id=job_id)  # type: ignore[arg-type]
    except DownloadJob.DoesNotExist:
        raise job_not_found() from None


class DownloadJobInitiateApi(APIView):
    # Set per request by the rate limits; every answer carries them, errors included.
    ratelimit_headers: dict[str, str] = {}

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        for name, value in self.ratelimit_headers.items():
            response[name] = value
        return super().finalize_response(request, response, *args, **kwargs)

    def post(self, request: Request) -> Response:
        verdict = ratelimits.initiate_rate_hit(
            user_id=request.user.pk,  # type: ignore[arg-type]
            ip=ratelimits.client_ip(request),
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
        serializer = DownloadJobInitiateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        idempotency_key = idempotency_key_validate(request.headers.get("Idempotency-Key"))
        try:
            job, _created = services.download_job_create(
                owner=request.user,  # type: ignore[arg-type]
                file_id=serializer.validated_data["file_id"],
                priority=serializer.validated_data["priority"],
                metadata=serializer.validated_data["metadata"],
                idempotency_key=idempotency_key,
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
        scheme = "wss" if request.is_secure() else "ws"
        subscribe_path = reverse("download-job-subscribe", kwargs={"job_id": job.job_id})
        return ok(
            {
                "job_id": job.job_id,
                "status": job.status,
                "estimated_time": selectors.download_job_estimate_s(),
                "polling_interval": settings.JOB_POLLING_INTERVAL_MS,
                "websocket_url": f"{scheme}://{request.get_host()}{subscribe_path}",
            }
        )


class DownloadJobStatusApi(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        job = _owned_job(request, job_id)
        hot = selectors.download_job_hot([job]).get(job.job_id)
        return ok(selectors.download_job_status(job=job, hot=hot))


class DownloadJobApi(APIView):
    """GET collects a completed job's file as a fresh presigned URL; DELETE cancels."""

    def get(self, request: Request, job_id: str) -> Response:
        job = _owned_job(request, job_id)
        if job.status == Status.COMPLETED:
            link = selectors.download_job_link(job=job)
            link["download_url"] = request.build_absolute_uri(link["download_url"])
            return ok(link)
        if job.status == Status.EXPIRED:
            raise ApiError(
                status_code=status.HTTP_410_GONE,
                code="DOWNLOAD_EXPIRED",
                message="The file was deleted after its retention period; start a new download",
            )
        message = f"Download not ready yet. Current status: {job.status}"
        if job.is_active:
            raise ApiError(status_code=status.HTTP_404_NOT_FOUND, code="JOB_NOT_READY", message=message)
        raise ApiError(
            status_code=status.HTTP_409_CONFLICT,
            code="JOB_NOT_READY",
            message=f"Download will not be ready: the job is {job.status}",
            extra={"status": job.status},
        )

    def delete(self, request: Request, job_id: str) -> Response:
        job = _owned_job(request, job_id)
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


class DownloadJobListApi(APIView):
    def get(self, request: Request) -> Response:
        filters = DownloadJobListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = selectors.download_job_list_for_owner(
            owner=request.user,  # type: ignore[arg-type]
            status=filters.validated_data.get("status"),
        )
        paginator = DownloadJobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self) or []
        hot = selectors.download_job_hot(page)
        return ok(
            {
                "results": [selectors.download_job_status(job=job, hot=hot.get(job.job_id)) for job in page],
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
            }
        )
