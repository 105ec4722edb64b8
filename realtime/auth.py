"""Who may open a job's socket: the session user, or the user of a DRF token that an API
client passes as `?token=<key>`; and from which web pages (the Origin check)."""

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from jobs.authentication import CachedTokenAuthentication


@database_sync_to_async
def _token_user(key: str) -> Any:
    """The token's user as the API finds it. An unknown key or an inactive user gives the
    anonymous user, whatever the session: the API answers 401."""
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class TokenAuthMiddleware(BaseMiddleware):
    """Sets scope["user"] from `?token=<key>` when the query string has one; otherwise
    leaves the user that the session gave."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        keys = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token")
        if keys:
            scope = {**scope, "user": await _token_user(keys[-1])}
        return await super().__call__(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:
    """Channels' session authentication, overridden by a token when one is given."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


class _BrowserOriginValidator(OriginValidator):
    def valid_origin(self, parsed_origin: Any) -> bool:
        # Browsers send an Origin with every WebSocket handshake, so a page of another
        # site is refused. Channels also refuses a handshake without one; only non-browser
        # clients make those (and could claim any Origin), so they are let through, to be
        # authenticated like any other.
        return parsed_origin is None or bool(super().valid_origin(parsed_origin))


def AllowedHostsOrNoOriginValidator(application: Any) -> Any:
    """Channels' AllowedHostsOriginValidator (the Origin's host must be in ALLOWED_HOSTS),
    except that a handshake without an Origin header, which no browser makes, is accepted."""
    allowed = AllowedHostsOriginValidator(application).allowed_origins
    return _BrowserOriginValidator(application, allowed)
