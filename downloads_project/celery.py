import ctypes
import logging
import os
import resource
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init

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


# glibc's malloc, as a worker uses it. A job's bytes pass through a few buffers of a chunk
# each (1 MiB: the origin's read, an S3 part's pieces). glibc hands a buffer that large out
# as fresh pages of its own (mmap) and gives them back when it is freed, so every chunk
# costs the kernel 256 page faults and their zeroing, twice or more: about 0.5 ms of CPU
# per MiB, as much as hashing it. Past a first free it raises that threshold itself, but it
# also returns the top of its heap to the kernel as soon as 128 KiB are free there, which
# gives the same faults back. So a worker keeps buffers up to 16 MiB on its heap and returns
# memory once 64 MiB are free at its top; its threads share 2 arenas (glibc would make up
# to 8 per core, each holding the freed buffers of its own threads). The budget of S3 parts
# (STAGING_MEMORY_BYTES) is not touched: it counts the bytes parts hold, wherever they live.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MALLOC_OPTIONS = (
    (_M_MMAP_THRESHOLD, 16 * 1024 * 1024),
    (_M_TRIM_THRESHOLD, 64 * 1024 * 1024),
    (_M_ARENA_MAX, 2),
)


def malloc_tune() -> bool:
    """Sets MALLOC_OPTIONS in this process (and the children it forks after); False where
    the C library has no mallopt (not glibc) or refuses one."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS)


def open_files_limit_raise(wanted: int = 65536) -> int:
    """Raises this process's soft limit of open files towards its hard limit (at most
    `wanted`) and returns it: hundreds of jobs at once each hold a socket to their origin,
    a file or a connection to the store, and, on SQLite, a connection to the database; a
    desktop's default of 1024 is near that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@worker_init.connect(weak=False)
def _worker_process_tune(**kwargs: Any) -> None:
    from django.conf import settings

    open_files_limit_raise()
    if settings.WORKER_MALLOC_TUNE and not malloc_tune():
        logging.getLogger(__name__).info("malloc options not set: the C library is not glibc")
