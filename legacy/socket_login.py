"""`?token=<key>`: a DRF token in a job socket's URL, from clients written before tickets.

Deprecated (a URL ends up in proxy logs): each use is logged, and the token is refused
once WEBSOCKET_TOKEN_QUERY_ALLOWED is off (by default from WEBSOCKET_TOKEN_QUERY_SUNSET
on). realtime/auth.py knows nothing of it: this middleware sits inside realtime's
authentication stack, between it and the socket routes (downloads_project/asgi.py), so
that what realtime decided first still holds where it did before:

- a `?ticket=` wins: realtime has put it in scope["ticket"] and the token is not read;
- otherwise the token's user replaces the scope's user, the session's or the anonymous
  user that realtime gives a page of another origin (CORS_ALLOWED_ORIGINS): such a page
  could always open a socket with a token, as it calls the API with one.
"""

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from jobs.api.authentication import CachedTokenAuthentication

logger = logging.getLogger(__name__)


class QueryTokenLogin(BaseMiddleware):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and "ticket" not in scope:
            query = parse_qs(scope.get("query_string", b"").decode("latin1"))
            if keys := query.get("token"):
                scope = {**scope, "user": await _query_token_user(keys[-1])}
        return await super().__call__(scope, receive, send)


async def _query_token_user(key: str) -> Any:
    """The user of a `?token=` key, logged (without the key) as the deprecated way in it is."""
    if not settings.WEBSOCKET_TOKEN_QUERY_ALLOWED:
        logger.warning("A socket was refused: ?token= is switched off (WEBSOCKET_TOKEN_QUERY_ALLOWED)")
        return AnonymousUser()
    user = await _token_user(key)
    logger.warning(
        "A socket was opened with ?token= (user %s), deprecated and refused from %s: use the ?ticket= "
        "of the job's websocket_url",
        user.pk,
        settings.WEBSOCKET_TOKEN_QUERY_SUNSET.isoformat(),
    )
    return user


@database_sync_to_async
def _token_user(key: str) -> Any:
    """The token's user as the API finds it. An unknown key or an inactive user gives the
    anonymous user, whatever the session: the API answers 401."""
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user
