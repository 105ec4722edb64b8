"""The Celery queues of download jobs: their names, the order a worker serves them, and
the one way a job's attempt is sent to them.

No Django import here: the settings (beat's schedule) and the command lines that start
workers read these names too.
"""

from celery import current_app

# A worker lists them in this order and serves downloads.high first (the broker's
# `queue_order_strategy`): maintenance goes there so a backlog never holds it up.
QUEUES = ("downloads.high", "downloads.normal", "downloads.low")
WORKER_QUEUES_ARG = ",".join(QUEUES)  # `celery worker -Q ...`
MAINTENANCE_QUEUE = "downloads.high"
DEFAULT_QUEUE = "downloads.normal"

STAGE_TASK = "jobs.download_job_stage"


def queue_name(priority: str) -> str:
    return f"downloads.{priority}"


def stage_send(*, job_pk: int, priority: str, countdown_s: float = 0) -> None:
    """Sends one attempt of the job to its priority's queue. By the task's name: the
    services that call this do not import the tasks that call them."""
    current_app.send_task(STAGE_TASK, args=(job_pk,), queue=queue_name(priority), countdown=countdown_s)
