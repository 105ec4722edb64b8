"""The baselines of bench/status.py: a minimal Django project in one module (its settings, its
URLs and its ASGI application), served by uvicorn with DJANGO_SETTINGS_MODULE set to this module:

    DJANGO_SETTINGS_MODULE=bench.status_baselines uvicorn bench.status_baselines:application

- GET /status/<job_id>: a DRF APIView (TokenAuthentication, IsAuthenticated) that reads the
  job's row with one SQL query, by job id and owner, and answers its status and progress.
- GET /health: a plain function view, {"status": "ok"}.
- GET /celery-progress/<task_id>/: the peer, celery-progress's `get_progress`, which reads the
  task's state from the Celery result backend (CELERY_RESULT_BACKEND). No authentication.

No middleware, Django's stock ASGI handler. DATABASE_URL is the project's database (its
auth_user, authtoken_token and jobs_downloadjob tables), with connections borrowed from
psycopg's pool as in the project's web processes (DATABASE_POOL_MAX_SIZE, default 10).
"""

import os

import environ
from celery import Celery
from django.core.asgi import get_asgi_application

SECRET_KEY = "bench-status-baselines"  # served on loopback only; signs nothing
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework.authtoken",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = __name__
USE_TZ = True
_DATABASE = environ.Env.db_url_config(os.environ["DATABASE_URL"])
DATABASES = {"default": {**_DATABASE, "CONN_MAX_AGE": 0}}
if _DATABASE["ENGINE"].endswith("postgresql"):  # SQLite (bench/status.py --profile embedded): no pool
    DATABASES["default"]["OPTIONS"] = {
        # bench/status.py tells its connections from the project's by this name.
        "application_name": "bench-status-baselines",
        "pool": {
            "min_size": 2,
            "max_size": int(os.environ.get("DATABASE_POOL_MAX_SIZE", "10")),
            "timeout": 5,
        },
    }
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
# With DEBUG off, Django logs a 500's traceback nowhere by default: to uvicorn's output.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}

# celery-progress reads task states through Celery's default app.
celery_app = Celery("bench-status-baselines", backend=os.environ["CELERY_RESULT_BACKEND"])
celery_app.set_default()

application = get_asgi_application()

# Only now: DRF's classes read the settings when they are defined.
from django.db import connection  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import include, path  # noqa: E402
from rest_framework.authentication import TokenAuthentication  # noqa: E402
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

JOB_ROW_SQL = (
    "SELECT status, progress, bytes_done, bytes_total FROM jobs_downloadjob"
    " WHERE job_id = %s AND owner_id = %s"
)


class JobStatusView(APIView):
    authentication_classes = (TokenAuthentication,)
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request, job_id: str) -> Response:
        with connection.cursor() as cursor:
            cursor.execute(JOB_ROW_SQL, [job_id, request.user.pk])
            row = cursor.fetchone()
        if row is None:
            return Response({"detail": "Not found."}, status=404)
        status, progress, bytes_done, bytes_total = row
        return Response(
            {"status": status, "progress": progress, "bytes_done": bytes_done, "bytes_total": bytes_total}
        )


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("status/<str:job_id>", JobStatusView.as_view()),
    path("health", health),
    path("celery-progress/", include("celery_progress.urls")),
]
