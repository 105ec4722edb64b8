"""Who may open a job's socket, and from which web pages (the Origin check).

The user is the one a `?ticket=` names (the ticket that the job's `websocket_url` carries,
jobs/tickets.py), for that job only; without a ticket, the session user. `?token=<key>`
(a DRF token in the URL) is still taken for the clients written before tickets, and no
longer documented: a URL ends up in proxy logs.
"""

from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from jobs.api.authentication import CachedTokenAuthentication
from jobs.tickets import Ticket, websocket_ticket_read


@database_sync_to_async
def _token_user(key: str) -> Any:
    """The token's user as the API finds it. An unknown key or an inactive user gives the
    anonymous user, whatever the session: the API answers 401."""
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


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
    Else `?token=<key>` sets scope["user"]. Otherwise the session's user stays."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        if tickets := query.get("ticket"):
            scope = {**scope, "user": AnonymousUser(), "ticket": tickets[-1]}
        elif keys := query.get("token"):
            scope = {**scope, "user": await _token_user(keys[-1])}
        return await super().__call__(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:
    """Channels' session authentication, overridden by a ticket or a token when one is given."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


async def socket_user(scope: dict[str, Any], job_id: str) -> Any:
    """Who the socket of `job_id` acts for: the ticket's user (a ticket for another job, past
    its TTL, forged, of a deactivated user, or minted with an API key since deleted gives
    nobody), else the scope's user; None or an anonymous user when nobody."""
    if (ticket := scope.get("ticket")) is not None:
        claims = websocket_ticket_read(ticket, job_id=job_id)
        return None if claims is None else await _ticket_user(claims)
    return scope.get("user")


class _BrowserOriginValidator(OriginValidator):
    def valid_origin(self, parsed_origin: Any) -> bool:
        # Browsers send an Origin with every WebSocket handshake, so a page of another
        # site is refused, unless CORS_ALLOWED_ORIGINS lists it (a browser app that calls
        # the API with a token: it opens the websocket_url's socket with its ticket).
        # Channels also refuses a handshake without one; only non-browser clients make
        # those (and could claim any Origin), so they are let through, to be
        # authenticated like any other.
        return (
            parsed_origin is None or bool(super().valid_origin(parsed_origin)) or _cors_allowed(parsed_origin)
        )


def _cors_allowed(parsed_origin: Any) -> bool:
    """The Origin is one of CORS_ALLOWED_ORIGINS, compared as django-cors-headers does."""
    return any(
        (allowed.scheme, allowed.netloc) == (parsed_origin.scheme, parsed_origin.netloc)
        for allowed in map(urlsplit, settings.CORS_ALLOWED_ORIGINS)
    )


def AllowedHostsOrNoOriginValidator(application: Any) -> Any:
    """Channels' AllowedHostsOriginValidator (the Origin's host must be in ALLOWED_HOSTS),
    except that a handshake without an Origin header, which no browser makes, is accepted,
    and so is one from a page of CORS_ALLOWED_ORIGINS."""
    allowed = AllowedHostsOriginValidator(application).allowed_origins
    return _BrowserOriginValidator(application, allowed)
