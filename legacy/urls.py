"""The old endpoint's two routes, deprecated (docs/api.md "Migrating from POST /download/start")."""

from django.urls import path, re_path

from jobs.job_id_path import JOB_ID_PATH_REGEX
from legacy import apis

urlpatterns = [
    path("download/start", apis.LegacyDownloadStartApi.as_view(), name="legacy-download-start"),
    re_path(
        rf"^download/start/(?P<job_id>{JOB_ID_PATH_REGEX})\Z",
        apis.LegacyDownloadResultApi.as_view(),
        name="legacy-download-result",
    ),
]
