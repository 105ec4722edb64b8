"""Moves the API keys of DRF's authtoken table (stored as themselves) into jobs.ApiKey
(stored as their digest), and empties that table: every existing key keeps working, and
no key remains in the database.

The digest and the visible first characters are computed as django-rest-knox computes
them for a key it made, so knox's lookup finds an old key like a new one. Going back
leaves the old table empty: a digest gives no key back, so keys must be issued again.
"""

from django.db import migrations
from knox.crypto import hash_token
from knox.settings import CONSTANTS


def drf_tokens_to_api_keys(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    ApiKey = apps.get_model("jobs", "ApiKey")
    tokens = list(Token.objects.all())
    api_keys = [
        ApiKey(
            digest=hash_token(token.key),
            token_key=token.key[: CONSTANTS.TOKEN_KEY_LENGTH],
            user_id=token.user_id,
            name="migrated",
        )
        for token in tokens
    ]
    ApiKey.objects.bulk_create(api_keys, batch_size=500)
    # `created` is set to now on insert (auto_now_add): the old date is written after.
    for api_key, token in zip(api_keys, tokens, strict=True):
        api_key.created = token.created
    ApiKey.objects.bulk_update(api_keys, ["created"], batch_size=500)
    Token.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0008_api_keys"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(drf_tokens_to_api_keys, migrations.RunPython.noop)]
