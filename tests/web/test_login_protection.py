"""Sign-in brute-force protection, through the login page and the admin's login page:
failures counted per username and client address together, and per address alone, in
hot-state Redis; the locked-out page that says when to try again; the lock's expiry;
the client address as the rate limits decide it; API tokens untouched."""

import time
from io import StringIO
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from infra.redis import reset as redis_clients_reset

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
ADDRESS_A = "203.0.113.7"
ADDRESS_B = "198.51.100.23"
LOCKED_OUT = "Too many failed sign-in attempts. Try again in 15 minutes."


def sign_in(
    client: Client, username: str, password: str, *, address: str = ADDRESS_A, path: str = LOGIN, **meta: Any
) -> Any:
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address, **meta)


def fail(client: Client, times: int, *, username: str = "alice", **kwargs: Any) -> None:
    for _ in range(times):
        response = sign_in(client, username, "wrong-password", **kwargs)
        assert response.status_code in (200, 429)


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and "sessionid" in response.cookies


def locked_out_message(response: Any) -> str:
    """The one error the form shows (the login page's alert, the admin's errornote)."""
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1
    return str(errors[0])


def state_redis() -> redis.Redis:
    return redis.Redis.from_url(django_settings.REDIS_STATE_URL)


@pytest.fixture
def root(db: None) -> User:
    return User.objects.create_superuser("root", password="root-password")


# --- per username and address --------------------------------------------------------------


def test_failures_before_the_limit_are_ordinary_wrong_passwords(user, settings):
    client = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        response = sign_in(client, "alice", "wrong-password")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in locked_out_message(response)

    assert signed_in(sign_in(client, "alice", "alice-password"))


def test_the_limit_locks_the_username_at_that_address_even_with_the_right_password(user, settings):
    assert settings.LOGIN_FAILURE_LIMIT == 5
    client = Client()
    fail(client, 4)

    locking = sign_in(client, "alice", "wrong-password")
    refused = sign_in(client, "alice", "alice-password")

    for response in (locking, refused):
        assert response.status_code == 429
        assert response["Retry-After"] == "900"
        assert locked_out_message(response) == LOCKED_OUT
        assert "sessionid" not in response.cookies
        # The site's own login page, the username kept, the message shown as an alert.
        assert response.templates[0].name == "registration/login.html"
        html = response.content.decode()
        assert 'role="alert"' in html
        assert LOCKED_OUT in html
        assert 'value="alice"' in html
    assert "_auth_user_id" not in client.session


def test_the_same_username_still_signs_in_from_another_address(user):
    fail(Client(), 5)

    assert signed_in(sign_in(Client(), "alice", "alice-password", address=ADDRESS_B))


def test_another_username_still_signs_in_from_the_same_address(user, other_user):
    fail(Client(), 5)

    assert signed_in(sign_in(Client(), "bob", "bob-password"))


def test_a_sign_in_forgets_that_usernames_failures_at_that_address(user):
    client = Client()
    fail(client, 4)
    assert signed_in(sign_in(client, "alice", "alice-password"))

    fail(Client(), 4)

    assert signed_in(sign_in(Client(), "alice", "alice-password"))


# --- per address -----------------------------------------------------------------------------


def test_one_address_is_locked_after_the_per_address_limit_across_usernames(user, settings):
    assert settings.LOGIN_FAILURE_LIMIT_PER_IP == 20
    client = Client()
    for number in range(20):
        fail(client, 1, username=f"guess-{number}")

    refused = sign_in(Client(), "alice", "alice-password")
    elsewhere = sign_in(Client(), "alice", "alice-password", address=ADDRESS_B)

    assert refused.status_code == 429
    assert refused["Retry-After"] == "900"
    assert locked_out_message(refused) == LOCKED_OUT
    assert signed_in(elsewhere)


def test_the_per_address_limit_counts_every_username_of_that_address(user, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 6
    fail(Client(), 4, username="alice")
    fail(Client(), 1, username="bob")
    fail(Client(), 1, username="carol")

    assert sign_in(Client(), "alice", "alice-password").status_code == 429
    assert signed_in(sign_in(Client(), "alice", "alice-password", address=ADDRESS_B))


# --- expiry and where the counts live --------------------------------------------------------


def test_the_lock_ends_after_the_cool_off(user, settings):
    settings.LOGIN_LOCKOUT_S = 2
    fail(Client(), 5)

    refused = sign_in(Client(), "alice", "alice-password")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "2"
    assert locked_out_message(refused) == "Too many failed sign-in attempts. Try again in 2 seconds."

    time.sleep(2.2)
    assert signed_in(sign_in(Client(), "alice", "alice-password"))


def test_the_counts_are_in_redis_shared_by_every_process(user):
    from axes.handlers.proxy import AxesProxyHandler

    fail(Client(), 4)
    assert state_redis().get(f"login:failures:{ADDRESS_A}") == b"4"
    assert 890 < state_redis().ttl(f"login:failures:{ADDRESS_A}") <= 900

    # Another process: a handler made anew, its own Redis connections, another client.
    AxesProxyHandler.get_implementation(force=True)
    redis_clients_reset()
    locking = sign_in(Client(), "alice", "wrong-password")

    assert locking.status_code == 429
    assert sign_in(Client(), "alice", "alice-password").status_code == 429


def test_a_sign_in_does_not_forget_the_addresss_failures(user, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 6
    fail(Client(), 4, username="someone")
    assert signed_in(sign_in(Client(), "alice", "alice-password"))

    fail(Client(), 2, username="someone-else")

    assert sign_in(Client(), "alice", "alice-password").status_code == 429


# --- the admin's login ------------------------------------------------------------------------


def test_the_admin_login_is_locked_the_same_way(root):
    fail(Client(), 5, username="root", path=ADMIN_LOGIN)

    refused = sign_in(Client(), "root", "root-password", path=ADMIN_LOGIN)
    elsewhere = sign_in(Client(), "root", "root-password", path=ADMIN_LOGIN, address=ADDRESS_B)

    assert refused.status_code == 429
    assert refused["Retry-After"] == "900"
    assert locked_out_message(refused) == LOCKED_OUT
    assert refused.templates[0].name == "admin/login.html"
    assert f'<p class="errornote">\n    {LOCKED_OUT}\n</p>' in refused.content.decode()
    assert "sessionid" not in refused.cookies
    assert signed_in(elsewhere)


def test_failures_on_either_login_page_add_up(root):
    fail(Client(), 3, username="root", path=ADMIN_LOGIN)
    fail(Client(), 2, username="root", path=LOGIN)

    assert sign_in(Client(), "root", "root-password", path=ADMIN_LOGIN).status_code == 429
    assert sign_in(Client(), "root", "root-password", path=LOGIN).status_code == 429


# --- the client address ----------------------------------------------------------------------


def test_a_forged_x_forwarded_for_does_not_change_the_counted_address(user, settings):
    assert settings.CLIENT_IP_HEADER == ""
    client = Client()
    for number in range(5):
        fail(client, 1, HTTP_X_FORWARDED_FOR=f"192.0.2.{number}")

    refused = sign_in(Client(), "alice", "alice-password", HTTP_X_FORWARDED_FOR="192.0.2.200")

    assert refused.status_code == 429


def test_behind_the_proxy_the_address_comes_from_its_header(user, settings):
    settings.CLIENT_IP_HEADER = "X-Forwarded-For"
    settings.CLIENT_IP_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for number in range(5):
        # The client may write anything on the left; the proxy appends the address it saw.
        fail(Client(), 1, address=proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{number}, {ADDRESS_A}")

    refused = sign_in(Client(), "alice", "alice-password", address=proxy, HTTP_X_FORWARDED_FOR=ADDRESS_A)
    other_client = sign_in(Client(), "alice", "alice-password", address=proxy, HTTP_X_FORWARDED_FOR=ADDRESS_B)

    assert refused.status_code == 429
    assert signed_in(other_client)


# --- lifting a lock ----------------------------------------------------------------------------


def test_operators_lift_a_username_lock_or_an_address_lock(user, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 6
    fail(Client(), 5)
    fail(Client(), 3, username="nobody", address=ADDRESS_B)
    fail(Client(), 3, username="somebody", address=ADDRESS_B)
    assert sign_in(Client(), "alice", "alice-password").status_code == 429
    assert sign_in(Client(), "alice", "alice-password", address=ADDRESS_B).status_code == 429
    out = StringIO()

    call_command("axes_reset_username", "alice", stdout=out)
    call_command("axes_reset_ip", ADDRESS_B, stdout=out)

    assert out.getvalue() == "1 attempts removed.\n3 attempts removed.\n"
    assert signed_in(sign_in(Client(), "alice", "alice-password"))
    assert signed_in(sign_in(Client(), "alice", "alice-password", address=ADDRESS_B))


# --- what it leaves alone ----------------------------------------------------------------------


def test_a_locked_address_still_reaches_the_api_with_a_token(api_client, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 5
    fail(Client(), 5, username="nobody")
    assert sign_in(Client(), "alice", "alice-password").status_code == 429

    response = api_client.get("/v1/downloads", REMOTE_ADDR=ADDRESS_A)

    assert response.status_code == 200


def test_a_locked_user_keeps_a_session_opened_before(user):
    browser = Client()
    assert signed_in(sign_in(browser, "alice", "alice-password"))
    fail(Client(), 5)

    assert browser.get("/v1/downloads", REMOTE_ADDR=ADDRESS_A).status_code == 200


def test_sign_in_answers_503_while_the_counts_redis_is_unreachable(user, redis_down):
    """A real client of a port where nothing listens: refused at once."""

    response = sign_in(Client(raise_request_exception=False), "alice", "alice-password")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "sessionid" not in response.cookies
