"""Fixtures of the client's tests. The service's own conftest.py (the repository's root)
gives the real stacks (`local_stack`, `s3_stack`: uvicorn + a Celery worker against the
test database) and the real HTTP origin (`origin`); these add a user of the test's own and
its token, and the origin's file scripts."""

import importlib
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from tests.factories import api_key_for
from tests.support.stack import Stack


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> Stack:
    stack: Stack = request.getfixturevalue(f"{request.param}_stack")
    return stack


@pytest.fixture
def token(django_user_model: Any) -> str:
    """A user of its own per test; committed, so the stack's processes see it."""
    user = django_user_model.objects.create_user(f"client-{uuid4().hex[:12]}")
    return api_key_for(user)


@pytest.fixture
def add_file(origin: Any) -> Callable[..., Any]:
    """`add_file(file_id, size, rate_bps=0, faults=[])`: a file of the origin; returns its
    script (`.sha256(file_id)`, `.content(file_id)`). FileScript is taken from the origin's
    own module, wherever the service's tests keep it."""
    file_script = importlib.import_module(type(origin).__module__).FileScript

    def add(file_id: int, size: int, **kwargs: Any) -> Any:
        return origin.add(file_id, file_script(size=size, **kwargs))

    return add
