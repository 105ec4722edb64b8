"""Fixtures of the admin's tests: a signed-in superuser, and the alert banner's cache
emptied before each test (it lives in the process, ten seconds long)."""

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client

from jobs.admin import alerts_banner


@pytest.fixture
def staff_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-password"))
    return client


@pytest.fixture(autouse=True)
def _fresh_alert_banner() -> Iterator[None]:
    alerts_banner.cached.clear()
    yield
    alerts_banner.cached.clear()
