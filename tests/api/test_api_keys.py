"""API keys (jobs/api_keys.py, jobs/api/authentication.py) through the HTTP API: stored as
digests, working from their creation to their deletion, the keys of DRF's old table still
working after the migration, and a revocation that holds against a request racing it."""

import threading
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from knox.crypto import hash_token
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from infra.redis import state_client
from jobs.api_keys import (
    REVOKED_HOLD_S,
    api_key_cached,
    api_key_create,
    api_key_remember,
    api_keys_revoke_cache,
)
from jobs.models import ApiKey
from tests.factories import api_key_for
from tests.support.databases import postgres_only

LIST = "/v1/downloads"
BEFORE_THE_MOVE = [("jobs", "0008_api_keys"), ("authtoken", "0004_alter_tokenproxy_options")]


def answered(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get(LIST).status_code


def stored_values(api_key: ApiKey) -> list[Any]:
    return [getattr(api_key, field.attname) for field in ApiKey._meta.concrete_fields]


def test_the_row_holds_the_digest_and_the_first_characters_never_the_key(user: User) -> None:
    api_key, key = api_key_create(user=user, name="ci")

    row = ApiKey.objects.get(pk=api_key.pk)
    assert key.startswith("dlk_")
    assert len(key) == 4 + 64
    assert not any(key in str(value) for value in stored_values(row))
    assert row.digest == hash_token(key)
    assert row.token_key == key[:15]
    assert (row.name, row.expiry) == ("ci", None)


def test_a_key_works_from_its_creation_and_is_refused_after_its_deletion(user: User) -> None:
    key = api_key_for(user)
    assert answered(key) == 200
    assert answered(key) == 200  # from the cache

    ApiKey.objects.get(user=user).delete()

    assert answered(key) == 401


def test_a_user_may_hold_several_keys_each_revoked_on_its_own(user: User) -> None:
    first, second = api_key_for(user, name="laptop"), api_key_for(user, name="ci")
    assert (answered(first), answered(second)) == (200, 200)

    ApiKey.objects.get(user=user, name="laptop").delete()

    assert (answered(first), answered(second)) == (401, 200)


def test_a_key_with_bytes_that_are_not_utf8_is_refused_401(user: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=b"Token \xff\xfe")
    assert client.get(LIST).status_code == 401


def test_last_used_is_written_when_the_database_is_asked_not_on_every_request(
    user: User, django_assert_num_queries: Any
) -> None:
    api_key, key = api_key_create(user=user)
    assert answered(key) == 200
    used = ApiKey.objects.get(pk=api_key.pk).last_used
    assert used is not None

    with django_assert_num_queries(0):
        api_key_cached(hash_token(key))
    assert answered(key) == 200
    assert ApiKey.objects.get(pk=api_key.pk).last_used == used


# --- the command ---------------------------------------------------------------------------


def test_api_key_create_prints_a_new_working_key_alone(user: User) -> None:
    out = StringIO()
    call_command("api_key_create", user.username, "--name", "deploy", stdout=out)

    key = out.getvalue().strip()
    assert ApiKey.objects.get(user=user).name == "deploy"
    assert answered(key) == 200


def test_api_key_create_refuses_an_unknown_user_and_makes_nothing(db: None) -> None:
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("api_key_create", "nobody")
    assert not ApiKey.objects.exists()


# --- the keys of DRF's table ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_key_of_the_old_table_works_after_the_migration_which_empties_it() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_THE_MOVE)
    old = executor.loader.project_state(BEFORE_THE_MOVE).apps
    old_user = old.get_model("auth", "User").objects.create(username="old-client")
    old_key = "0123456789abcdef0123456789abcdef01234567"  # as DRF made them: 40 hex
    old.get_model("authtoken", "Token").objects.create(key=old_key, user=old_user)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert not Token.objects.exists()
    migrated = ApiKey.objects.get(user__username="old-client")
    assert (migrated.name, migrated.token_key) == ("migrated", old_key[:15])
    assert old_key not in str(stored_values(migrated))
    assert answered(old_key) == 200
    assert answered(old_key[:-1] + "8") == 401


# --- revocation ----------------------------------------------------------------------------


def test_caching_refuses_a_user_revoked_between_a_read_and_its_caching(user: User) -> None:
    """The pieces of a request in the order of the race: the request reads the active row,
    the admin saves the deactivation (signal), the request caches what it read."""
    api_key, key = api_key_create(user=user)
    active = User.objects.get(pk=user.pk)
    user.is_active = False
    user.save()

    assert api_key_remember(digest=api_key.digest, api_key_id=api_key.pk, user=active) is False
    assert api_key_cached(api_key.digest) is None
    assert answered(key) == 401


def test_the_revoked_mark_lasts_revoked_hold_s(user: User) -> None:
    api_keys_revoke_cache([user.pk])
    ttl = state_client().ttl(f"api-key-revoked:{user.pk}")
    assert 0 < ttl <= REVOKED_HOLD_S


def _request_from_another_thread(key: str) -> int:
    """A request on a connection of its own, as another web thread makes it."""
    codes: list[int] = []

    def request() -> None:
        try:
            codes.append(answered(key))
        finally:
            connection.close()

    thread = threading.Thread(target=request)
    thread.start()
    thread.join(timeout=60)
    assert codes, "the request did not finish"
    return codes[0]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_user_deactivated_in_a_transaction_is_refused_once_it_commits() -> None:
    """The admin saves a user in a transaction: a request made between the save and the
    commit reads the row as still active, and must not leave it cached."""
    user = User.objects.create_user("leaving")
    key = api_key_for(user)
    assert answered(key) == 200  # cached

    with transaction.atomic():
        user.is_active = False
        user.save()
        # Still active for everyone else: the request is served, and caches nothing.
        assert _request_from_another_thread(key) == 200

    assert answered(key) == 401


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_key_deleted_in_a_transaction_is_refused_once_it_commits() -> None:
    user = User.objects.create_user("rotating")
    key = api_key_for(user)

    with transaction.atomic():
        ApiKey.objects.filter(user=user).delete()
        assert _request_from_another_thread(key) == 200

    assert answered(key) == 401


def test_a_bulk_update_is_revoked_by_api_keys_revoke_cache(user: User) -> None:
    """`update()` sends no signal: the cached user stays until the call."""
    key = api_key_for(user)
    assert answered(key) == 200

    User.objects.filter(pk=user.pk).update(is_active=False)
    assert answered(key) == 200  # still cached, as docs/operations.md warns

    api_keys_revoke_cache([user.pk])
    assert answered(key) == 401
