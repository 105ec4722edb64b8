from django.urls import path

from .consumers import JobConsumer

websocket_urlpatterns = [
    path("v1/download/subscribe/<str:job_id>", JobConsumer.as_asgi()),
]
