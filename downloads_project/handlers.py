"""The HTTP side of the ASGI application: Django's own handler, run synchronously.

Every view of the service is synchronous (DRF, the admin, the page). Django's
`ASGIHandler` runs its middleware in async mode, and each synchronous middleware hook
(`process_request`, `process_response` of the built-in ones) then costs a hop to a thread
and back: seven middleware, up to fourteen hops, before the view's own hop. Measured
under uvicorn, that overhead cost more than the work of a small request.

`SyncASGIHandler` keeps everything Django's handler does (body reading, signals,
disconnect detection, streaming) and loads the middleware chain in sync mode, so one
request makes one hop: the whole chain and the view run in the request's thread.
"""

from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class SyncASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        # Thread-sensitive: the thread of this request's context, where Django also
        # closes the response (and so returns the database connection) afterwards.
        response: Any = await sync_to_async(self.get_response, thread_sensitive=True)(request)
        return response
