"""Django's core settings: the secret key, the hosts, the apps and middleware, templates,
static files and sign-in."""

from downloads_project.settings.environment import BASE_DIR, VAR_DIR, env

# Public, so only for the embedded default on 127.0.0.1; DJANGO_SECURE refuses it.
EMBEDDED_SECRET_KEY = "insecure-embedded-default-change-me"  # noqa: S105
SECRET_KEY = env("DJANGO_SECRET_KEY", default=EMBEDDED_SECRET_KEY)
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The table of the API keys before jobs.ApiKey: migration jobs 0009 moves its keys out
    # and empties it. Kept for one release so that migration can read it.
    "rest_framework.authtoken",
    "knox",
    "storages",
    "channels",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "jobs",
    "realtime",
    "webhooks",
    "stack",
    "legacy",  # the old endpoint and socket login: deleted with legacy/
    "notices",  # e-mail when a job ends (above jobs: it imports jobs, never the other way)
    "axes",
    "corsheaders",
]

MIDDLEWARE = [
    # Outside everything: counts and times every answer (jobs/ops/http_metrics.py).
    "jobs.ops.http_metrics.HttpMetricsMiddleware",
    # Outermost: `Cache-Control: no-store` on every API answer, whoever made it (jobs/api/cache_control.py).
    "jobs.api.cache_control.ApiNoStoreMiddleware",
    # Then: answers CORS preflights of /v1/ before any other middleware could (CORS_* below).
    "corsheaders.middleware.CorsMiddleware",
    # Then: the probes and the scrape, whatever the Host (jobs/ops/probes.py): orchestrators and
    # Prometheus reach a process by its address, which DJANGO_ALLOWED_HOSTS need not list.
    "jobs.ops.probes.ProbesAnyHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: answers a sign-in attempt that the login protection refused (jobs/web/login_protection.py).
    "axes.middleware.AxesMiddleware",
]

# HTTP requests of a web process run on a pool of this many threads (downloads_project/

ROOT_URLCONF = "downloads_project.urls"
WSGI_APPLICATION = "downloads_project.wsgi.application"
ASGI_APPLICATION = "downloads_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The firing alerts, as a banner on the admin's pages (read only there).
                "jobs.admin.alerts_banner.admin_alerts",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
USE_I18N = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
# First: refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = [
    "jobs.web.login_protection.LoginProtectionBackend",
    "django.contrib.auth.backends.ModelBackend",
]
