"""`manage.py api_key_create USER [--name N]`: makes an API key for USER and prints it.

The key is printed once, alone on standard output (for `TOKEN=$(...)`): the database keeps
only its digest, so it cannot be shown again. A user may hold several keys; each is
deleted on its own (the admin's API keys page) to revoke it.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.api_keys import api_key_create


class Command(BaseCommand):
    help = "Make an API key for a user and print it (shown this once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the key is for, e.g. the client using it")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user {username!r}") from None
        _api_key, key = api_key_create(user=user, name=name)
        self.stdout.write(key)
