"""API keys: made, found through a cache, and revoked so that the revocation holds.

A key is a django-rest-knox token in `jobs.models.ApiKey`: the database keeps the key's
digest and its first characters, never the key, which its maker shows once.

The user of a valid key is cached in hot-state Redis for TOKEN_CACHE_TTL_S, so that
polling reads no row (jobs/api/authentication.py). A revocation (a key deleted, a user
deactivated, or any other change of the user) must not leave that user cached:

- the entries of the user's keys are dropped when the change is saved, and again when its
  transaction commits: a request that read the row in between, still unchanged, may have
  cached it;
- a "revoked" mark, written at the save and again at the commit, makes caching refuse the
  user's keys for REVOKED_HOLD_S: a request that read the row before the commit and caches
  it after the commit's drop finds the mark. The check and the write are one Lua script,
  so no drop falls between them.

`User.objects.filter(...).update(...)` sends no signal: call `api_keys_revoke_cache` with
the users' ids after it (docs/operations.md).

Hot-state Redis rather than Django's cache: Django makes a cache client per request
context, and so, under ASGI, a new Redis connection per request; hot state has one pool
per process (and never evicts, so a dropped entry stays dropped). Redis is a shortcut
only: when it cannot be reached, the database answers, and a revocation is kept
TOKEN_CACHE_TTL_S at most.
"""

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from infra.redis import state_client, state_script
from jobs.models import ApiKey

logger = logging.getLogger(__name__)

# How long caching refuses a user's keys after a change of the user or of a key: the time
# a request takes from reading the row to caching it, with a wide margin for a busy host.
REVOKED_HOLD_S = 10

# What the API needs of the user; any other field is loaded from the row if ever read.
_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")


@dataclass(frozen=True)
class CachedKey:
    user: User
    api_key_id: int


def api_key_create(*, user: User, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `user`: its row, and the key itself, which exists nowhere else (the
    row holds its digest): the caller shows it once."""
    api_key, key = ApiKey.objects.create(user=user, name=name)
    return api_key, key


def _entry_name(digest: str) -> str:
    # The digest the row holds: a cache entry names no key, and a signal can drop it.
    return f"api-key:{digest}"


def _revoked_name(user_id: int) -> str:
    return f"api-key-revoked:{user_id}"


def api_key_cached(digest: str) -> CachedKey | None:
    """The cached user of the key of `digest`, or None: not cached, or Redis unreachable."""
    try:
        raw = state_client().get(_entry_name(digest))
    except Exception:
        logger.warning("API key cache unreachable; reading the key from the database", exc_info=True)
        return None
    if raw is None:
        return None
    entry = json.loads(raw)
    return CachedKey(user=User.from_db("default", list(_USER_FIELDS), entry["u"]), api_key_id=entry["k"])


# Caches the entry (KEYS[1]) unless the user's revoked mark (KEYS[2]) is there.
_REMEMBER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def api_key_remember(*, digest: str, api_key_id: int, user: User) -> bool:
    """Caches `user` as the user of the key of `digest`, unless the user's keys were revoked
    in the last REVOKED_HOLD_S (the row just read may be from before that); True if cached."""
    entry = json.dumps({"u": [getattr(user, name) for name in _USER_FIELDS], "k": api_key_id})
    try:
        cached = state_script(_REMEMBER)(
            keys=[_entry_name(digest), _revoked_name(user.pk)], args=[entry, settings.TOKEN_CACHE_TTL_S]
        )
    except Exception:
        logger.warning("Could not cache an API key's user", exc_info=True)
        return False
    return bool(cached)


def api_key_used(api_key: ApiKey) -> None:
    """Records that `api_key` was used, unless that was recorded in the last
    TOKEN_CACHE_TTL_S: a key found in the cache is not written at all."""
    now = timezone.now()
    recently = now - timedelta(seconds=settings.TOKEN_CACHE_TTL_S)
    if api_key.last_used is not None and api_key.last_used > recently:
        return
    # Skipped while another transaction holds the row (an operator editing or deleting the
    # key): a request never waits on it for a record that is approximate anyway.
    unlocked = ApiKey.objects.filter(pk=api_key.pk).select_for_update(skip_locked=True).values("pk")
    with transaction.atomic():  # FOR UPDATE needs one, if only for this statement
        ApiKey.objects.filter(pk__in=unlocked).update(last_used=now)
    api_key.last_used = now


def _revoke(user_ids: Collection[int], digests: Collection[str]) -> None:
    try:
        with state_client().pipeline(transaction=True) as pipe:
            for user_id in user_ids:
                pipe.set(_revoked_name(user_id), 1, ex=REVOKED_HOLD_S)
            if digests:
                pipe.delete(*(_entry_name(digest) for digest in digests))
            pipe.execute()
    except Exception:
        # An entry lives TOKEN_CACHE_TTL_S at most.
        logger.warning("Could not drop API keys from the cache", exc_info=True)


def _revoke_now_and_on_commit(user_ids: Collection[int], digests: Collection[str]) -> None:
    _revoke(user_ids, digests)
    transaction.on_commit(lambda: _revoke(user_ids, digests))


def api_keys_revoke_cache(user_ids: Iterable[int]) -> None:
    """Drops the cached users of every key of `user_ids`, now and when the current
    transaction commits, and refuses to cache them for REVOKED_HOLD_S after that. Saving or
    deleting a user or a key does this by signal; call it after a change that sends none,
    such as `User.objects.filter(...).update(is_active=False)`."""
    user_ids = list(user_ids)
    digests = list(ApiKey.objects.filter(user_id__in=user_ids).values_list("digest", flat=True))
    _revoke_now_and_on_commit(user_ids, digests)


def api_keys_cache_reset() -> None:
    """Forgets every cached user and revoked mark (tests start from none: a test database
    gives a new user the id of an earlier test's)."""
    names = list(state_client().scan_iter(match="api-key*", count=1000))
    if names:
        state_client().delete(*names)


@receiver([post_save, post_delete], sender=ApiKey, dispatch_uid="api-key-cache-key")
def _api_key_changed(sender: Any, instance: ApiKey, created: bool = False, **kwargs: Any) -> None:
    if created:
        return  # nothing cached yet
    _revoke_now_and_on_commit([instance.user_id], [instance.digest])


@receiver([post_save, post_delete], sender=User, dispatch_uid="api-key-cache-user")
def _user_changed(
    sender: Any, instance: User, created: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    if created:
        return  # no key yet
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a sign-in: nothing the cache holds changed
    api_keys_revoke_cache([instance.pk])
