import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")

app = Celery("downloads_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
