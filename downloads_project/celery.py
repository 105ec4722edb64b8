import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from downloads_project.logging import redact_handlers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
# Celery's Django fixup runs Django's system checks when a worker or beat starts, and drops
# what they find. All that remains of them is what they import: the URLconf with every view
# (DRF, drf-spectacular, the probes with boto3), and the template tags of the admin's and
# the templates' checks. That is about 30 MiB that each pool child inherits and staging
# never uses. `manage.py migrate` and `check` run the checks, and report them. An empty
# CELERY_SKIP_CHECKS (`CELERY_SKIP_CHECKS=`) runs them in the worker again.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

app = Celery("downloads_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The worker and beat replace Django's logging handlers with their own: filter those too.
after_setup_logger.connect(redact_handlers, weak=False)
after_setup_task_logger.connect(redact_handlers, weak=False)
