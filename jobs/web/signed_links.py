"""The local storage's signed links, served: the embedded default's stand-in for S3
presigned URLs.

The view checks the link and answers with the file's headers and no body, naming the file
in `X-Accel-Redirect`; the bytes are sent by what stands in front of the thread pool, so
that a client reading slowly never holds one of its threads: nginx from an internal
location (FILES_ACCEL_REDIRECT=true, deploy/nginx/downloads.conf.template), else the web
process's event loop (edge/file_sender.py).
"""

from django.http import Http404, HttpRequest, HttpResponse

from jobs.transfer.content_headers import safe_content_type
from jobs.transfer.links import SignedFileSystemStorage
from jobs.transfer.storage import downloads_storage


def file_download(request: HttpRequest, token: str) -> HttpResponse:
    """Serves a file of SignedFileSystemStorage to whoever holds an unexpired signed URL.
    A bad or expired token answers 404, as an expired S3 URL answers 403: nothing leaks."""
    claims = SignedFileSystemStorage.link_claims(token)
    if claims is None:
        raise Http404("Invalid or expired link")
    storage = downloads_storage()
    if not isinstance(storage, SignedFileSystemStorage) or not storage.exists(claims["key"]):
        raise Http404("No such file")
    response = HttpResponse(content_type=safe_content_type(claims["ct"]))
    response["X-Accel-Redirect"] = storage.internal_url(claims["key"])
    if claims["cd"]:
        response["Content-Disposition"] = claims["cd"]
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    # The origin's bytes are served from the site's own origin: should a browser render
    # them anyway, no script of theirs runs with the site's cookies.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
