"""The ASGI application that uvicorn serves: WebSockets through Channels, HTTP through
Django's WSGI handler on a pool of threads.

Every HTTP view of the service is synchronous (DRF, the admin, the page). Under Django's
ASGI handler each request gets a thread of its own, made and joined per request, and the
middleware and the request signals hop between the event loop and that thread several
times: measured under uvicorn, that cost more than the work of a status poll. Here a
request runs start to end (signals, middleware, view, closing) in one thread of a
bounded pool (`WEB_THREADS`) that a2wsgi keeps, and its response streams back through the
event loop. The thread that served a request returns its database connection to the
pool (settings.DATABASES) when the request finishes.

No client decides how long it holds a thread: a request reaches the pool with its whole
body already read (edge/request_body.py), and a signed link's file is sent after its view has
returned (edge/file_sender.py). uvicorn's protocol (edge/http_protocol.py) bounds the request head.
"""

import logging
import os
from typing import Any

from infra import roles

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
# A web process (infra/roles.py): its database connections come from a pool, its Redis
# commands and S3 calls have a request's budget (downloads_project/settings/).
os.environ.setdefault(roles.ROLE_VARIABLE, roles.WEB)

from django.core.wsgi import get_wsgi_application

# Django must be set up before anything imports models (the consumers do).
django_wsgi_app = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402

from downloads_project.logging import redact_handlers  # noqa: E402
from edge.file_sender import FileSender  # noqa: E402
from edge.lifespan import WebLifespan  # noqa: E402
from edge.request_body import RequestBodyRead  # noqa: E402
from legacy.asgi import legacy_layers  # noqa: E402  (the old endpoint: goes with legacy/)
from realtime.auth import SiteOriginValidator, TokenAuthMiddlewareStack  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

# uvicorn set up its loggers (its defaults, or --log-config) before importing this module.
# Its access log and its WebSocket handshake lines print the path with `?token=`: its
# handlers get the same filter as Django's (an access log turned off stays off).
for _name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
    redact_handlers(logging.getLogger(_name))

# The page's script and styles come from the app server itself (found by the staticfiles
# finders, no collectstatic step); a proxy may serve /static/ instead.
http_application: Any = WSGIMiddleware(StaticFilesHandler(django_wsgi_app), workers=settings.WEB_THREADS)  # type: ignore[arg-type]
websocket_routes: Any = URLRouter(websocket_urlpatterns)
http_application, websocket_routes = legacy_layers(http=http_application, websocket_routes=websocket_routes)
if not settings.FILES_ACCEL_REDIRECT:
    http_application = FileSender(http_application)

application = ProtocolTypeRouter(
    {
        # What a slow client could hold a thread for is done on the event loop instead:
        # reading a request's body, sending a signed link's file (unless nginx sends it),
        # and the old POST /download/start's wait for its job while it lasts.
        "http": RequestBodyRead(http_application),
        # The job's `?ticket=`, or the session cookie of a page of the site; browsers must come
        # from a page of the site or of CORS_ALLOWED_ORIGINS (realtime/auth.py).
        "websocket": SiteOriginValidator(TokenAuthMiddlewareStack(websocket_routes)),
        # Refuses to start on the embedded secret key beyond loopback.
        "lifespan": WebLifespan(),
    }
)
