"""Who may open a job's socket, and from which web pages (the Origin check).

The user is the one a `?ticket=` names (the ticket that the job's `websocket_url` carries,
jobs/tickets.py), for that job only; without a ticket, the session user, but only on a
page of the site itself: a page of another origin (CORS_ALLOWED_ORIGINS) calls the API
with a token and no cookie, so its socket needs the ticket, and the cookie that a browser
sends anyway on its handshake counts for nothing. A layer that downloads_project/asgi.py
puts inside this stack, between it and the routes, may set the user in other ways.
"""

import io
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain

from jobs.tickets import Ticket, websocket_ticket_read

logger = logging.getLogger(__name__)

# scope["origin"] after SiteOriginValidator: which page opened the socket.
ORIGIN_SITE = "site"  # a page of the site itself
ORIGIN_CROSS_SITE = "cross-site"  # a page of CORS_ALLOWED_ORIGINS: tickets only
ORIGIN_NONE = "none"  # no Origin header: not a browser


@database_sync_to_async
def _ticket_user(ticket: Ticket) -> Any:
    """The ticket's user, if still active, and if the API key it was minted with (if any)
    still exists: one query."""
    users = get_user_model()._default_manager.filter(pk=ticket.user_id, is_active=True)
    if ticket.api_key_id is not None:
        users = users.filter(auth_token_set__pk=ticket.api_key_id)
    return users.first()


class TokenAuthMiddleware(BaseMiddleware):
    """A `?ticket=` replaces the session's user: it goes to scope["ticket"], for the
    consumer to check against its job (`socket_user`), and the scope's user is anonymous.
    Otherwise the session's user stays, on a page of the site or a client without an
    Origin; a page of another origin gets the anonymous user."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        if tickets := query.get("ticket"):
            scope = {**scope, "user": AnonymousUser(), "ticket": tickets[-1]}
        elif scope.get("origin") == ORIGIN_CROSS_SITE:
            scope = {**scope, "user": AnonymousUser()}
        return await super().__call__(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:
    """Channels' session authentication, overridden by a ticket when one is given."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


async def socket_user(scope: dict[str, Any], job_id: str) -> Any:
    """Who the socket of `job_id` acts for: the ticket's user (a ticket for another job, past
    its TTL, forged, of a deactivated user, or minted with an API key since deleted gives
    nobody), else the scope's user; None or an anonymous user when nobody."""
    if (ticket := scope.get("ticket")) is not None:
        claims = websocket_ticket_read(ticket, job_id=job_id)
        return None if claims is None else await _ticket_user(claims)
    return scope.get("user")


class SiteOriginValidator:
    """Refuses a browser's handshake from a page that is neither of the site nor of
    CORS_ALLOWED_ORIGINS (HTTP 403, before any socket exists), and tells the middleware
    inside which it was, as scope["origin"].

    Browsers send an Origin with every WebSocket handshake. It is the site's when it is
    what Django's CSRF check takes for an unsafe request: the handshake's own scheme and
    Host (`https` where the server sees TLS, or a trusted X-Forwarded-Proto; the Host one
    of ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS. Scheme, host and port all count: a
    page on another port of the same host is another site. A handshake without an Origin,
    which no browser makes, is let through, to be authenticated like any other (a client
    that is not a browser could claim any Origin anyway)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = next((value for name, value in scope.get("headers", ()) if name == b"origin"), None)
        if origin is None:
            kind = ORIGIN_NONE
        elif _is_site_origin(scope, origin.decode("latin1")):
            kind = ORIGIN_SITE
        elif _is_cors_allowed(origin.decode("latin1")):
            kind = ORIGIN_CROSS_SITE
        else:
            return await WebsocketDenier()(scope, receive, send)
        return await self.application({**scope, "origin": kind}, receive, send)


def _is_site_origin(scope: dict[str, Any], origin: str) -> bool:
    # Django's own reading of the scheme and Host (SECURE_PROXY_SSL_HEADER,
    # USE_X_FORWARDED_HOST, ALLOWED_HOSTS), from an HTTP request of the same headers.
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    request = ASGIRequest({**scope, "method": "GET", "scheme": scheme}, io.BytesIO())
    try:
        if origin == f"{request.scheme}://{request.get_host()}":
            return True
    except DisallowedHost:
        pass
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == trusted.scheme and is_same_domain(parsed.netloc, trusted.netloc.lstrip("*"))
        for trusted in map(urlsplit, settings.CSRF_TRUSTED_ORIGINS)
        if trusted.netloc.startswith("*")
    )


def _is_cors_allowed(origin: str) -> bool:
    """The Origin is one of CORS_ALLOWED_ORIGINS, compared as django-cors-headers does."""
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        (allowed.scheme, allowed.netloc) == (parsed.scheme, parsed.netloc)
        for allowed in map(urlsplit, settings.CORS_ALLOWED_ORIGINS)
    )
