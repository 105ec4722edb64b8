"""Where the old endpoint stands in the ASGI application: the one call that
downloads_project/asgi.py makes, so that retiring it there is deleting that call and its
import."""

from typing import Any

from legacy.socket_login import QueryTokenLogin
from legacy.wait import LegacyWait


def legacy_layers(*, http: Any, websocket_routes: Any) -> tuple[Any, Any]:
    """The HTTP application with the old `POST /download/start`'s wait in front of it
    (legacy/wait.py), and the socket routes with the old `?token=` login around them
    (legacy/socket_login.py), to go inside realtime's authentication stack."""
    return LegacyWait(http), QueryTokenLogin(websocket_routes)
