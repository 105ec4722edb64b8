from django.apps import AppConfig


class NoticesConfig(AppConfig):
    name = "notices"
    verbose_name = "E-mail notices"

    def ready(self) -> None:
        from notices import receivers  # noqa: F401  (connects the receivers)
