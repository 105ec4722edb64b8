"""Where webhooks meet jobs: the outbox rows written with a job's end, the initiate body's
`webhook_id` checked, and the gauge of deliveries due added to the scrape."""

from typing import Any

from django.contrib.auth.models import User
from rest_framework import status

from jobs.api.errors import ApiError
from jobs.models import DownloadJob
from jobs.ops.scrape import levels_collector_add
from jobs.signals import job_finished, job_initiating
from webhooks import metrics, selectors, services


def _deliveries_record(sender: Any, *, job: DownloadJob, event: str, **kwargs: Any) -> None:
    services.webhook_deliveries_record(job=job, event=event)


def _webhook_id_check(sender: Any, *, owner: User, data: dict[str, Any], **kwargs: Any) -> None:
    webhook_id = data.get("webhook_id")
    if webhook_id and not selectors.webhook_endpoint_exists(owner=owner, public_id=webhook_id):
        raise ApiError(
            status_code=status.HTTP_400_BAD_REQUEST,
            code="WEBHOOK_NOT_FOUND",
            message="webhook_id is not one of your webhook endpoints",
        )


job_finished.connect(_deliveries_record, sender=DownloadJob, dispatch_uid="webhooks.deliveries_record")
job_initiating.connect(_webhook_id_check, sender=DownloadJob, dispatch_uid="webhooks.webhook_id_check")
levels_collector_add(metrics.DeliveriesDueCollector())
