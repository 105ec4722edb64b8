"""E-mail notices of finished jobs (notices/): where mail goes, the site's public address
for the links in it, and how a notice that could not be sent is tried again."""

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import env

# Django's mailer from one URL (django-environ reads it): smtp://user:password@host:587,
# smtp+tls://..., smtp+ssl://..., consolemail:// (the embedded default: the worker's log).
EMAIL_URL = env("EMAIL_URL", default="")
# Unset, e-mail is off as every integration is by default: the messages go to the worker's
# log (console), and Django's deploy check (mail.E001: a development-only backend) is not
# raised for it. An EMAIL_URL that names the console is still flagged.
SILENCED_SYSTEM_CHECKS = [] if EMAIL_URL else ["mail.E001"]
EMAIL_URL = EMAIL_URL or "consolemail://"
EMAIL_TIMEOUT_S = env.float("EMAIL_TIMEOUT_S", default=10.0)
_email = env.email_url_config(EMAIL_URL)
_SMTP_OPTIONS = {  # django-environ's names -> the SMTP backend's
    "EMAIL_HOST": "host",
    "EMAIL_PORT": "port",
    "EMAIL_HOST_USER": "username",
    "EMAIL_HOST_PASSWORD": "password",
    "EMAIL_USE_TLS": "use_tls",
    "EMAIL_USE_SSL": "use_ssl",
}
MAILERS = {
    "default": {
        "BACKEND": _email["EMAIL_BACKEND"],
        "OPTIONS": (
            {option: _email[name] for name, option in _SMTP_OPTIONS.items() if _email.get(name) is not None}
            | {"timeout": EMAIL_TIMEOUT_S}
            if _email["EMAIL_BACKEND"].endswith("smtp.EmailBackend")
            else {}
        ),
    }
}
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Downloads <downloads@localhost>")

# The address people reach the site at: the e-mails' links are made absolute with it.
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")
if not SITE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"SITE_URL is {SITE_URL!r}: an http:// or https:// address")

# A notice whose send failed is tried again after each of these delays in turn, then
# marked failed. The send task retries itself on that schedule; beat's sweep sends what is
# due and was left (a worker lost, the broker flushed) every EMAIL_NOTICE_SWEEP_EVERY_S.
EMAIL_NOTICE_RETRY_BACKOFF_S = [
    float(s) for s in env.list("EMAIL_NOTICE_RETRY_BACKOFF_S", default=[10, 60, 300, 1800, 7200])
]
if not EMAIL_NOTICE_RETRY_BACKOFF_S or min(EMAIL_NOTICE_RETRY_BACKOFF_S) < 0:
    raise ImproperlyConfigured("EMAIL_NOTICE_RETRY_BACKOFF_S: one or more delays of 0 s or more")
# A sender's claim on a notice: another sender takes it over only after this long, so it
# must exceed EMAIL_TIMEOUT_S (one SMTP conversation) by a margin.
EMAIL_NOTICE_CLAIM_S = env.float("EMAIL_NOTICE_CLAIM_S", default=120.0)
if EMAIL_NOTICE_CLAIM_S <= EMAIL_TIMEOUT_S:
    raise ImproperlyConfigured("EMAIL_NOTICE_CLAIM_S must exceed EMAIL_TIMEOUT_S")
EMAIL_NOTICE_SWEEP_EVERY_S = env.float("EMAIL_NOTICE_SWEEP_EVERY_S", default=60.0)
