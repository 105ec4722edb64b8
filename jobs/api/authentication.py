"""API keys (`Authorization: Token <key>`), resolved without a database query on the
polling path.

django-rest-knox's `TokenAuthentication` finds a key's row by its first characters and
compares digests, then reads its user: queries on every request. `CachedTokenAuthentication`
asks the cache of jobs/api_keys.py first, and caches what the database answered, so that
a poll reads Redis only; that module drops an entry when its key or its user changes.
"""

from typing import Any

from django.utils.translation import gettext_lazy as _
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.settings import CONSTANTS
from rest_framework.exceptions import AuthenticationFailed

from jobs.api_keys import api_key_cached, api_key_remember, api_key_used
from jobs.models import ApiKey


class CachedTokenAuthentication(TokenAuthentication):
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
