from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Download jobs"

    def ready(self) -> None:
        # The signals that drop a revoked token's cached user.
        from jobs.api import authentication  # noqa: F401
