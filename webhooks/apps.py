from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # The receivers of jobs' signals (the outbox, the initiate check) and the scrape's
        # gauge of deliveries due.
        from webhooks import receivers  # noqa: F401
