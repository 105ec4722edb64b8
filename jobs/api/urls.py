from django.urls import path, register_converter

from jobs.api import views as apis
from jobs.job_id_path import JOB_ID_PATH_REGEX


class JobIdConverter:
    regex = JOB_ID_PATH_REGEX

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(JobIdConverter, "job_id")

urlpatterns = [
    path("v1/download/initiate", apis.DownloadJobInitiateApi.as_view(), name="download-job-initiate"),
    path(
        "v1/download/status/<job_id:job_id>", apis.DownloadJobStatusApi.as_view(), name="download-job-status"
    ),
    path("v1/download/subscribe/<job_id:job_id>", apis.websocket_only, name="download-job-subscribe"),
    path("v1/download/<job_id:job_id>", apis.DownloadJobApi.as_view(), name="download-job"),
    path("v1/downloads", apis.DownloadJobListApi.as_view(), name="download-job-list"),
]
