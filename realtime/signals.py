"""Open sockets of a user who is deactivated or deleted are closed (4401) at once, on every
web process, once the change is committed: before it, another request could still read
the user as active, and a rolled-back change revokes nothing.

A bulk `update(is_active=False)` sends no signal: those sockets close at their next check
of the user (realtime/consumers.py, every WEBSOCKET_RESYNC_S).
"""

from functools import partial
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from jobs.events import user_sockets_close


@receiver(post_save, sender=get_user_model(), dispatch_uid="realtime-user-deactivated")
def _user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if not instance.is_active:
        transaction.on_commit(partial(user_sockets_close, instance.pk))


@receiver(post_delete, sender=get_user_model(), dispatch_uid="realtime-user-deleted")
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    transaction.on_commit(partial(user_sockets_close, instance.pk))
