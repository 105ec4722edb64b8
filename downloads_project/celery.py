import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from downloads_project.logging import redact_handlers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")

app = Celery("downloads_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker and beat replace Django's logging handlers with their own: filter those too.
after_setup_logger.connect(redact_handlers, weak=False)
after_setup_task_logger.connect(redact_handlers, weak=False)
