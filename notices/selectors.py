"""Reads of the notices."""

from typing import Any

from django.contrib.auth.models import User

from notices.models import NotificationPreference


def notification_preference_data(*, user: User) -> dict[str, Any]:
    """The user's preferences as the API answers them (off until set)."""
    email_when_finished = NotificationPreference.objects.filter(user=user, email_when_finished=True).exists()
    return {"email_when_finished": email_when_finished, "email": user.email or None}
