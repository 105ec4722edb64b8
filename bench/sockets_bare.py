"""The bare-consumer baseline of bench/sockets.py: a stock Channels `AsyncWebsocketConsumer`
that joins the group its path names, says `{"type": "snapshot"}` once, and forwards every
`job.event` of the group to its socket (`json.dumps` of the event, per socket, as a stock
consumer does). No authentication, no middleware, no database: what any Channels fan-out
costs on the same uvicorn command line and the same channel layer (the project's settings).

    uvicorn bench.sockets_bare:application      # ws://HOST:PORT/bare/<group>
"""

import json
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class BareConsumer(AsyncWebsocketConsumer):
    group = ""

    async def connect(self) -> None:
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data='{"type": "snapshot"}')

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message["event"]))


application = ProtocolTypeRouter({"websocket": URLRouter([path("bare/<str:group>", BareConsumer.as_asgi())])})
