"""What the site trusts and tells browsers: forwarded headers, https, cookies, the checks
of the secret key, cross-origin access (CORS) and the protection of sign-ins."""

from datetime import timedelta

from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.base import ALLOWED_HOSTS, DEBUG, EMBEDDED_SECRET_KEY, SECRET_KEY
from downloads_project.settings.environment import env

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto. Only switch this on when
# the proxy strips the header from clients, or anyone can claim https.
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env.bool("USE_X_FORWARDED_HOST", default=False)

# One explicit switch, not a guess from DEBUG or the hosts: "this site is served to
# browsers over https only" (TLS at uvicorn, or at a proxy with TRUST_X_FORWARDED_PROTO).
# It makes the cookies Secure, redirects http to https and sends HSTS. Off by default,
# so the embedded default keeps working on http://127.0.0.1.
SECURE = env.bool("DJANGO_SECURE", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=SECURE)
# Probes of a load balancer or Kubernetes, and Prometheus, speak plain http to the pod.
SECURE_REDIRECT_EXEMPT = [r"^(health|ready|metrics)$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if SECURE else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=SECURE)
# Hard to undo (browsers ship the list): an explicit choice; `check --deploy` warns until made.
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The page's script reads the csrftoken cookie to send X-CSRFToken (static/downloads.js);
# an HttpOnly CSRF cookie would break it and protect nothing (Django's CSRF docs).
CSRF_COOKIE_HTTPONLY = False
if SECURE and not DEBUG and SECRET_KEY == EMBEDDED_SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECURE is on: set DJANGO_SECRET_KEY to a long random value")
# The public key signs sessions, CSRF tokens and download links: it may serve only this
# machine's own loopback names. The example files' placeholders are never a secret.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
if SECRET_KEY == EMBEDDED_SECRET_KEY and not set(ALLOWED_HOSTS) <= LOOPBACK_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS names hosts beyond this machine's loopback: "
        "set DJANGO_SECRET_KEY to a long random value (50+ characters)"
    )
if SECRET_KEY != EMBEDDED_SECRET_KEY and "change-me" in SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is an example file's placeholder: set it to a long random value (50+ characters)"
    )

# --- CORS: browser apps of other origins (clients/react) ----------------------------------
# Pages of these origins (`scheme://host[:port]`, comma-separated) may call /v1/ from the
# browser and open the socket of a job's websocket_url (realtime/auth.py). None by default:
# no cross-origin access. Without credentials (cookies): such a page authenticates its calls
# with `Authorization: Token`, and its socket with the websocket_url's ticket.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/v1/"
CORS_ALLOW_HEADERS = (*cors_default_headers, "idempotency-key")
CORS_EXPOSE_HEADERS = [
    "Retry-After", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"
]  # fmt: skip

# --- Login protection --------------------------------------------------------------------
# Failed sign-ins (the login page and the admin's) are counted in hot-state Redis, shared by
# every web process, through django-axes (jobs/web/login_protection.py): per username at a
# client address, and per address. LOGIN_FAILURE_LIMIT failures of one username from one
# address within LOGIN_LOCKOUT_S, or LOGIN_FAILURE_LIMIT_PER_IP of any usernames, refuse
# its sign-ins for LOGIN_LOCKOUT_S: a 429 login page that says when to try again.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_LIMIT_PER_IP = env.int("LOGIN_FAILURE_LIMIT_PER_IP", default=20)
LOGIN_LOCKOUT_S = env.int("LOGIN_LOCKOUT_S", default=900)
if min(LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_LIMIT_PER_IP, LOGIN_LOCKOUT_S) < 1:
    raise ImproperlyConfigured(
        "LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_LIMIT_PER_IP and LOGIN_LOCKOUT_S must be 1 or more"
    )
AXES_HANDLER = "jobs.web.login_protection.LoginFailureHandler"
AXES_LOCKOUT_CALLABLE = "jobs.web.login_protection.login_lockout_response"
AXES_CLIENT_IP_CALLABLE = "jobs.client_address.client_ip"  # the rate limits' rule (CLIENT_IP_HEADER)
# What the handler counts (axes names it in its start-up log line).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_S)
# A refused attempt tests no password: it is not counted and does not lengthen the wait.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_ENABLE_ADMIN = False  # its admin pages list database records; the counts are in Redis
