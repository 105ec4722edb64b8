from django.urls import path

from notices import apis

urlpatterns = [
    path(
        "v1/notifications/preferences",
        apis.NotificationPreferenceApi.as_view(),
        name="notification-preference",
    ),
]
