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
"""

import logging
import os

from downloads_project import roles

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
# A web process: its database connections come from a pool (settings.DATABASES).
roles.declare_web()

from django.core.wsgi import get_wsgi_application  # noqa: E402

# Django must be set up before anything imports models (the consumers do).
django_wsgi_app = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402

from downloads_project.legacy_wait import LegacyWait  # noqa: E402
from downloads_project.lifespan import WebLifespan  # noqa: E402
from downloads_project.logging import redact_handlers  # noqa: E402
from realtime.auth import SiteOriginValidator, TokenAuthMiddlewareStack  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

# uvicorn set up its loggers (its defaults, or --log-config) before importing this module.
# Its access log and its WebSocket handshake lines print the path with `?token=`: its
# handlers get the same filter as Django's (an access log turned off stays off).
for _name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
    redact_handlers(logging.getLogger(_name))

application = ProtocolTypeRouter(
    {
        # The page's script and styles come from the app server itself (found by the
        # staticfiles finders, no collectstatic step); a proxy may serve /static/ instead.
        # The old POST /download/start waits for its job on the event loop, not in a thread.
        "http": LegacyWait(
            WSGIMiddleware(StaticFilesHandler(django_wsgi_app), workers=settings.WEB_THREADS)  # type: ignore[arg-type]
        ),
        # The job's `?ticket=`, or the session cookie of a page of the site; browsers must come
        # from a page of the site or of CORS_ALLOWED_ORIGINS (realtime/auth.py).
        "websocket": SiteOriginValidator(TokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        # Refuses to start on the embedded secret key beyond loopback.
        "lifespan": WebLifespan(),
    }
)
