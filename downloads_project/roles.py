"""Which kind of process this is, for the few settings that differ by role.

The ASGI entry point (`downloads_project.asgi`) declares its process a web process before
it loads the settings; every other process (Celery worker and beat, `manage.py`, tests)
is not one. A module variable rather than an environment variable: a child process
started by a web process does not inherit the role.
"""

_web = False


def declare_web() -> None:
    global _web
    _web = True


def is_web() -> bool:
    return _web
