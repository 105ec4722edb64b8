import logging
import os

import django

from downloads_project import roles

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
# A web process: its database connections come from a pool (settings.DATABASES).
roles.declare_web()
# Django must be set up before anything imports models (the consumers do).
django.setup(set_prefix=False)

from downloads_project.handlers import SyncASGIHandler  # noqa: E402

django_asgi_app = SyncASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from downloads_project.logging import redact_handlers  # noqa: E402
from realtime.auth import AllowedHostsOrNoOriginValidator, TokenAuthMiddlewareStack  # noqa: E402
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
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Session cookie or `?token=`; browsers must come from a page of ALLOWED_HOSTS.
        "websocket": AllowedHostsOrNoOriginValidator(
            TokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
