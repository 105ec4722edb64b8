"""API tokens, resolved without a database query on the polling path.

DRF's `TokenAuthentication` reads the token and its user from the database on every
request. `CachedTokenAuthentication` keeps the user of a valid token in hot-state Redis
for TOKEN_CACHE_TTL_S, and the signals below drop it at once when the token is deleted
or replaced, or its user is changed or deleted, so a revoked token or a deactivated user
is refused on the next request. The cache is a shortcut only: when Redis cannot be
reached, the database answers as before.

Hot-state Redis rather than Django's cache: Django makes a cache client per request
context, and so, under ASGI, a new Redis connection per request; hot state has one pool
per process (and never evicts, so a dropped entry stays dropped).
"""

import hashlib
import json
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from jobs import hotstate

logger = logging.getLogger(__name__)

# What the API needs of the user; any other field is loaded from the row if ever read.
_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")


def _cache_key(key: str) -> str:
    # The token is a credential: its digest, not the token itself, names the entry.
    return "token-user:" + hashlib.sha256(key.encode()).hexdigest()


def _cached_user(key: str) -> User | None:
    try:
        raw = hotstate.client().get(_cache_key(key))
    except Exception:
        logger.warning("Token cache unreachable; reading the token from the database", exc_info=True)
        return None
    if raw is None:
        return None
    return User.from_db("default", list(_USER_FIELDS), json.loads(raw))


def _remember(key: str, user: User) -> None:
    values = [getattr(user, name) for name in _USER_FIELDS]
    try:
        hotstate.client().set(_cache_key(key), json.dumps(values), ex=settings.TOKEN_CACHE_TTL_S)
    except Exception:
        logger.warning("Could not cache a token's user", exc_info=True)


def _forget(*keys: str) -> None:
    try:
        hotstate.client().delete(*(_cache_key(key) for key in keys))
    except Exception:
        # The entry lives TOKEN_CACHE_TTL_S at most.
        logger.warning("Could not drop a token from the cache", exc_info=True)


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        user = _cached_user(key)
        if user is not None:
            return user, Token(key=key, user=user)
        user, token = super().authenticate_credentials(key)  # refuses unknown keys, inactive users
        _remember(key, user)
        return user, token


@receiver([post_save, post_delete], sender=Token, dispatch_uid="token-cache-token")
def _token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    _forget(instance.key)


@receiver([post_save, post_delete], sender=User, dispatch_uid="token-cache-user")
def _user_changed(sender: Any, instance: User, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a login: nothing the cache holds changed
    keys = list(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True))
    if keys:
        _forget(*keys)
