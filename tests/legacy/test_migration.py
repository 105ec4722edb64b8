"""The callers' model moved from `jobs` to `legacy` (jobs migration 0010, legacy 0001) with
the table left as it was: a row counted before the move is the same row after it, and a
permission given on the model before still holds."""

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from legacy.models import LegacyCaller

BEFORE_THE_MOVE = [("jobs", "0009_api_keys_from_drf_tokens")]


@pytest.mark.django_db(transaction=True)
def test_migrating_forward_keeps_the_callers_rows_and_their_permissions() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_THE_MOVE)
    ContentType.objects.clear_cache()
    old = executor.loader.project_state(BEFORE_THE_MOVE).apps
    old_user = old.get_model("auth", "User").objects.create(username="old-client")
    seen = timezone.now()
    old.get_model("jobs", "LegacyCaller").objects.create(
        user=old_user,
        user_agent="old-client/2.3",
        calls=3,
        accepted=2,
        gone=1,
        first_seen=seen,
        last_seen=seen,
    )
    old_permission = old.get_model("auth", "Permission").objects.get(
        content_type__app_label="jobs", codename="view_legacycaller"
    )
    old_user.user_permissions.add(old_permission)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    ContentType.objects.clear_cache()

    assert LegacyCaller._meta.db_table == "jobs_legacycaller"
    caller = LegacyCaller.objects.get(user__username="old-client")
    assert (caller.user_agent, caller.calls, caller.accepted, caller.gone, caller.last_seen) == (
        "old-client/2.3",
        3,
        2,
        1,
        seen,
    )
    assert User.objects.get(username="old-client").has_perm("legacy.view_legacycaller")
    assert Permission.objects.filter(codename="view_legacycaller").count() == 1
    assert not ContentType.objects.filter(app_label="jobs", model="legacycaller").exists()
