"""Celery tasks of the notices: thin wrappers that take an id and call a service."""

from celery import Task, shared_task

from notices import services


@shared_task(
    name=services.SEND_TASK, bind=True, acks_late=True, max_retries=None, soft_time_limit=60, time_limit=90
)
def email_notice_send(self: Task, notice_pk: int) -> str:
    """Sends one notice. A failed send retries this task after the row's next delay (the
    row counts the tries and gives up); a retry that finds the notice sent or claimed does
    nothing, so no schedule of retries, duplicates or sweeps sends it twice."""
    result = services.email_notice_send(notice_pk=notice_pk)
    if result.outcome is services.SendOutcome.RETRY:
        raise self.retry(countdown=result.retry_in_s)
    return result.outcome.value


@shared_task(name="notices.email_notices_sweep")
def email_notices_sweep() -> int:
    """Sent by beat: queues every notice that is due and was left unsent."""
    return services.email_notices_sweep()
