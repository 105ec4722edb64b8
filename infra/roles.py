"""Which kind of process this is, for the few settings that differ by role.

The role is read from the environment (DOWNLOADS_PROCESS_ROLE), as DJANGO_SETTINGS_MODULE
is: the ASGI entry point (`downloads_project.asgi`) sets it to `web` before it loads the
settings, unless the environment already names one; every other process (Celery worker
and beat, `manage.py`, tests) is not a web process. A process that starts others names
each child's role in the child's environment rather than handing its own on (the test
stacks drop it from theirs).
"""

import os

ROLE_VARIABLE = "DOWNLOADS_PROCESS_ROLE"
WEB = "web"


def is_web() -> bool:
    return os.environ.get(ROLE_VARIABLE, "") == WEB
