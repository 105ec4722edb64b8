"""API keys (`Authorization: Bearer <key>`, RFC 6750, or `Authorization: Token <key>`, the
scheme of DRF and knox), resolved without a database query on the polling path.

django-rest-knox's `TokenAuthentication` finds a key's row by its first characters and
compares digests, then reads its user: queries on every request. `CachedTokenAuthentication`
asks the cache of jobs/api_keys.py first, and caches what the database answered, so that
a poll reads Redis only; that module drops an entry when its key or its user changes.
"""

import re
from typing import Any

from django.utils.translation import gettext_lazy as _
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.settings import CONSTANTS
from rest_framework.authentication import get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from jobs.api_keys import api_key_cached, api_key_remember, api_key_used
from jobs.models import ApiKey

# The schemes of `Authorization` that carry an API key, compared without case (RFC 9110).
AUTH_SCHEMES = ("Bearer", "Token")
_SCHEMES = {scheme.lower().encode() for scheme in AUTH_SCHEMES}
# A 401's challenges (RFC 9110 section 11.6.1): either scheme takes the key alone.
CHALLENGE = 'Bearer realm="api", Token realm="api"'
INVALID_KEY_CHALLENGE = 'Bearer realm="api", error="invalid_token", Token realm="api"'
_SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,19}")


def unsupported_scheme_message(request: Request) -> str | None:
    """What is wrong with an `Authorization` header that carries no API key (a proxy's
    `Basic`, a bare key), for the 401 that no other way in (a session) answered instead.
    The header's value is never echoed: it may be a key sent without its scheme."""
    parts = get_authorization_header(request).split()
    if not parts or parts[0].lower() in _SCHEMES:
        return None
    scheme = parts[0].decode("latin-1")
    named = f"scheme {scheme!r}" if len(parts) > 1 and _SCHEME_NAME.fullmatch(scheme) else "scheme"
    return f"Unsupported Authorization {named}: send `Authorization: Bearer <key>` (or `Token <key>`)."


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        """knox's, with either scheme. Another scheme is not refused here: it may be a
        proxy's own `Basic` in front of a signed-in browser, whose session then counts."""
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in _SCHEMES:
            return None
        if len(parts) == 1:
            raise AuthenticationFailed(_("Invalid Authorization header: no API key after the scheme."))
        if len(parts) > 2:
            raise AuthenticationFailed(_("Invalid Authorization header: the API key may not contain spaces."))
        return self.authenticate_credentials(parts[1])

    def authenticate_header(self, request: Request) -> str:
        return CHALLENGE

    def authenticate_credentials(self, token: bytes | str) -> tuple[Any, ApiKey]:
        """The key's user and row; refuses an unknown key and an inactive user (401).
        `token` is the header's bytes, or a str (the old `?token=` of the WebSocket)."""
        try:
            key = token.decode() if isinstance(token, bytes) else token
        except UnicodeDecodeError:
            raise AuthenticationFailed(_("Invalid token.")) from None
        digest = hash_token(key)
        if (cached := api_key_cached(digest)) is not None:
            # A stand-in for the row: what the request may read of it is the id.
            api_key = ApiKey(
                id=cached.api_key_id, user=cached.user, token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH]
            )
            return cached.user, api_key
        user, api_key = super().authenticate_credentials(key.encode())
        api_key_used(api_key)
        api_key_remember(digest=digest, api_key_id=api_key.pk, user=user)
        return user, api_key
