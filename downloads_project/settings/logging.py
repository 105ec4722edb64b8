"""Logging: one plain handler on the console, every handler redacting secrets."""

from downloads_project.settings.environment import env

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Every handler redacts secrets (downloads_project/logging.py).
    "filters": {"redact_secrets": {"()": "downloads_project.logging.RedactSecrets"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]}
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # uvicorn's own handlers get the same filter when it loads the app (asgi.py).
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
