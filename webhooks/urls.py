from django.urls import path

from webhooks import apis

urlpatterns = [
    path("v1/webhooks", apis.WebhookListApi.as_view(), name="webhook-list"),
    path("v1/webhooks/<str:webhook_id>", apis.WebhookApi.as_view(), name="webhook"),
    path("v1/webhooks/<str:webhook_id>/rotate", apis.WebhookRotateApi.as_view(), name="webhook-rotate"),
    path(
        "v1/webhooks/<str:webhook_id>/deliveries",
        apis.WebhookDeliveryListApi.as_view(),
        name="webhook-delivery-list",
    ),
    path(
        "v1/webhooks/<str:webhook_id>/deliveries/<str:delivery_id>/redeliver",
        apis.WebhookRedeliverApi.as_view(),
        name="webhook-delivery-redeliver",
    ),
]
