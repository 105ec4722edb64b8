"""The Celery tasks of every installed app, registered as a worker's autodiscovery does at
start (`app.autodiscover_tasks()` in downloads_project/celery.py imports each app's
`tasks` module): a test process imports only what its tests import."""

import importlib
from importlib.util import find_spec

from django.apps import apps


def tasks_modules_import() -> list[str]:
    """Imports the `tasks` module of every installed app that has one; returns their names."""
    found = []
    for config in apps.get_app_configs():
        name = f"{config.name}.tasks"
        if find_spec(config.name) is not None and find_spec(name) is not None:
            importlib.import_module(name)
            found.append(name)
    return found
