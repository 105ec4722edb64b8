"""The web process: its pool of threads, what a client may hold of it (edge/), the REST
framework and the OpenAPI schema."""

from downloads_project.settings.environment import env

# asgi.py); a request beyond them waits for a free thread. Those that need the database
# borrow one of its DATABASE_POOL_MAX_SIZE connections; polling needs none.
WEB_THREADS = env.int("WEB_THREADS", default=20)

# What a slow or endless client may hold of a web process (docs/operations.md "What uvicorn
# itself bounds"). uvicorn's protocol (edge/http_protocol.py): a request's line and headers
# must arrive within REQUEST_HEAD_TIMEOUT_S of a new connection or of the request's first
# byte (else 408 and closed; between requests, uvicorn's keep-alive) and fit in
# REQUEST_HEAD_MAX_BYTES (431), its URL in REQUEST_URL_MAX_BYTES (414). Before the thread
# pool (edge/request_body.py): the whole body within REQUEST_BODY_TIMEOUT_S (408), at most
# REQUEST_BODY_MAX_BYTES (413).
# A client that takes nothing of an answer for SEND_IDLE_TIMEOUT_S loses its connection.
REQUEST_HEAD_TIMEOUT_S = env.float("REQUEST_HEAD_TIMEOUT_S", default=10.0)
REQUEST_HEAD_MAX_BYTES = env.int("REQUEST_HEAD_MAX_BYTES", default=64 * 1024)
REQUEST_URL_MAX_BYTES = env.int("REQUEST_URL_MAX_BYTES", default=8 * 1024)
REQUEST_BODY_TIMEOUT_S = env.float("REQUEST_BODY_TIMEOUT_S", default=10.0)
SEND_IDLE_TIMEOUT_S = env.float("SEND_IDLE_TIMEOUT_S", default=30.0)
# Django's own default (2.5 MB); Django's check of request.body and request.POST says the same.
REQUEST_BODY_MAX_BYTES = env.int("REQUEST_BODY_MAX_BYTES", default=2_621_440)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_MAX_BYTES

# --- REST framework ----------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "jobs.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["jobs.api.parsers.JSONParser"],  # DRF's, deep nesting a 400
    "EXCEPTION_HANDLER": "jobs.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # OPTIONS would describe the views outside the envelope; nothing here needs it (CORS
    # preflights are answered by CorsMiddleware before they reach a view).
    "DEFAULT_METADATA_CLASS": None,
}

# --- OpenAPI (drf-spectacular) -----------------------------------------------------------
# The schema at /api/schema/, Swagger UI at /api/docs/ with its assets served from
# drf-spectacular-sidecar (no CDN). The shapes of bodies and errors are in jobs/api/openapi.py.

SPECTACULAR_SETTINGS = {
    "TITLE": "Download service API",
    "VERSION": "1.0.0",
    "DESCRIPTION": (
        "Start, watch and collect file-preparation jobs. Every JSON response is the envelope "
        '`{"success": true, "data": ...}` or `{"success": false, "error": {"code": ..., '
        '"message": ...}}`. Authenticate with `Authorization: Token <key>` (API clients) or '
        "the session cookie of the login page (browser; unsafe methods need the CSRF token).\n\n"
        "Live progress is pushed on the WebSocket `/v1/download/subscribe/<job_id>` (the "
        "`websocket_url` that initiate returns, whose `?ticket=` opens it; or the session cookie "
        "of a page of this site), which OpenAPI does not describe: its first message is a "
        "`snapshot`, then `status_update`, "
        "`progress`, `heartbeat` and one of `completed`, `error`, `cancelled`."
    ),
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,  # the values are their own labels
    # Names of the enums that several components share (jobs/api/openapi.py).
    "ENUM_NAME_OVERRIDES": {
        "SuccessTrueEnum": [(True, True)],
        "SuccessFalseEnum": [(False, False)],
        "JobStatusEnum": "jobs.models.Status",
        "NotReadyStatusEnum": ["failed", "cancelled"],
        "WebhookEventEnum": "webhooks.models.Event",
    },
}
