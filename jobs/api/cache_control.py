"""`Cache-Control: no-store` on every answer of the API.

An API answer is one user's view of their jobs at one moment (a token's jobs, a link that
expires): no shared cache may keep it, nor a browser reuse it. The edges' rules (the
Cloudflare ruleset's cache bypass for /v1/) say the same, but the answer itself must not
depend on them. Set in a middleware, outside every other one, so that the answers the
views never see (a 503 for a dependency's fault raised in a middleware, a CORS preflight,
Django's 404 and 500 handlers) carry it too.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_cache_control

# The API (/v1/) and the deprecated POST /download/start with its result URL.
API_PATH_PREFIXES = ("/v1/", "/download/start")


class ApiNoStoreMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.path.startswith(API_PATH_PREFIXES):
            patch_cache_control(response, no_store=True)
        return response
