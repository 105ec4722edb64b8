from django.http import HttpRequest, JsonResponse

from .api_errors import error_body


def websocket_only(request: HttpRequest, job_id: str) -> JsonResponse:
    """The subscribe URL speaks WebSocket; a plain HTTP request is told so."""
    response = JsonResponse(
        error_body("UPGRADE_REQUIRED", "Connect to this URL with a WebSocket"), status=426
    )
    response["Upgrade"] = "websocket"
    return response
