"""The WebSocket routes. A job id is what the HTTP routes take (`jobs/job_id_path.py`): any
other path, a job id with a space or of 120 characters say, is closed 4404 as HTTP answers
404, before it could reach the consumer (a channel group name cannot hold it)."""

from django.urls import re_path

from jobs.job_id_path import JOB_ID_PATH_REGEX

from .consumers import JobConsumer, UnknownPathConsumer

websocket_urlpatterns = [
    re_path(rf"^v1/download/subscribe/(?P<job_id>{JOB_ID_PATH_REGEX})\Z", JobConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
