"""The admin of API keys through its HTTP pages: keys are listed by their first characters,
never shown but once, on the page that answers their creation."""

import re

import pytest
from django.urls import NoReverseMatch, reverse
from knox.crypto import hash_token
from rest_framework.test import APIClient

from jobs.api_keys import api_key_create
from jobs.models import ApiKey

CHANGELIST = "admin:jobs_apikey_changelist"
ADD = "admin:jobs_apikey_add"


def test_the_list_shows_prefix_user_name_created_last_used_and_never_a_key(staff_client, user):
    api_key, key = api_key_create(user=user, name="ci runner")

    page = staff_client.get(reverse(CHANGELIST)).content.decode()
    change = staff_client.get(reverse("admin:jobs_apikey_change", args=[api_key.pk])).content.decode()

    for html in (page, change):
        assert f"{key[:15]}…" in html
        assert "ci runner" in html
        assert key not in html
        assert api_key.digest not in html
        assert key[15:25] not in html  # nothing past the visible characters
    headers = ("Key starts with", "User", "Name", "Created", "Last used")
    assert [header for header in headers if header not in page] == []


def test_adding_a_key_shows_it_once_and_it_works(staff_client, user):
    response = staff_client.post(reverse(ADD), {"user": user.pk, "name": "deploy"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (key,) = re.findall(r'<code id="new-api-key">([^<]+)</code>', response.content.decode())
    row = ApiKey.objects.get(user=user)
    assert (row.name, row.digest, row.token_key) == ("deploy", hash_token(key), key[:15])
    assert "not shown again" in response.content.decode()
    # Nowhere after: not the next page, not a message waiting in a cookie.
    assert "messages" not in response.cookies
    later = staff_client.get(reverse(CHANGELIST)).content.decode()
    assert key not in later
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/v1/downloads").status_code == 200


def test_a_key_deleted_in_the_admin_is_refused(staff_client, user):
    api_key, key = api_key_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/v1/downloads").status_code == 200

    staff_client.post(reverse("admin:jobs_apikey_delete", args=[api_key.pk]), {"post": "yes"})

    assert client.get("/v1/downloads").status_code == 401


def test_drfs_token_admin_which_lists_keys_in_clear_is_gone(staff_client):
    with pytest.raises(NoReverseMatch):
        reverse("admin:authtoken_tokenproxy_changelist")
    assert staff_client.get("/admin/authtoken/tokenproxy/").status_code == 404
    index = staff_client.get(reverse("admin:index")).text
    assert "/admin/authtoken/" not in index
    assert ">Tokens<" not in index
