"""`GET` and `PUT /v1/notifications/preferences`."""

from notices.models import NotificationPreference

URL = "/v1/notifications/preferences"


def test_off_until_set_and_the_address_shown(api_client, user):
    assert api_client.get(URL).json() == {
        "success": True,
        "data": {"email_when_finished": False, "email": None},
    }
    user.email = "alice@example.com"
    user.save(update_fields=["email"])
    response = api_client.put(URL, {"email_when_finished": True}, format="json")
    assert response.json() == {
        "success": True,
        "data": {"email_when_finished": True, "email": "alice@example.com"},
    }
    assert api_client.get(URL).json()["data"]["email_when_finished"] is True
    api_client.put(URL, {"email_when_finished": False}, format="json")
    assert NotificationPreference.objects.get(user=user).email_when_finished is False


def test_email_needs_an_address_and_a_boolean(api_client, user):
    response = api_client.put(URL, {"email_when_finished": True}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "EMAIL_MISSING")
    response = api_client.put(URL, {}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "VALIDATION_ERROR")
    assert response.json()["error"]["fields"] == {"email_when_finished": ["This field is required."]}
    assert NotificationPreference.objects.count() == 0


def test_needs_a_signed_in_user(client, db):
    assert client.get(URL).status_code == 401
