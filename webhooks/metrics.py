"""Prometheus metrics of webhook deliveries (counted in the worker that sends; see
jobs/metrics.py for how every process's values reach /metrics), and the deliveries due,
read from the database at scrape time."""

import logging
from collections.abc import Iterable

from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from webhooks.models import DeliveryStatus, WebhookDelivery

logger = logging.getLogger(__name__)

deliveries = Counter(
    "download_webhook_deliveries",
    "Attempts of webhook deliveries by outcome: delivered, retried, failed (a 4xx, or the "
    "schedule spent), gone (410: the endpoint disabled) or refused (the URL failed the "
    "address check).",
    ["outcome"],
)
delivery_seconds = Histogram(
    "download_webhook_delivery_seconds",
    "Time of one delivery attempt, from the request to the receiver's answer (or its failure).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)


def attempt_record(outcome: str, seconds: float) -> None:
    deliveries.labels(outcome=outcome).inc()
    delivery_seconds.observe(seconds)


class DeliveriesDueCollector(Collector):
    """`download_webhook_deliveries_due`: pending deliveries whose attempt is due now (a
    level that grows while receivers or workers fall behind). Left out of a scrape, and
    logged, when the database cannot be read."""

    def collect(self) -> Iterable[Metric]:
        try:
            due = WebhookDelivery.objects.filter(
                status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
            ).count()
        except Exception:
            logger.warning("metrics: could not count the webhook deliveries due", exc_info=True)
            return
        gauge = GaugeMetricFamily(
            "download_webhook_deliveries_due", "Webhook deliveries whose next attempt is due now."
        )
        gauge.add_metric([], due)
        yield gauge
