from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Download jobs"

    def ready(self) -> None:
        # The signals that drop a revoked API key's cached user.
        from jobs import api_keys  # noqa: F401
