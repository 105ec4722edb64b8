"""The local storage's signed links, served: the embedded default's stand-in for S3
presigned URLs."""

from django.http import FileResponse, Http404, HttpRequest

from jobs.transfer.files import safe_content_type
from jobs.transfer.storage import SignedFileSystemStorage, downloads_storage


def file_download(request: HttpRequest, token: str) -> FileResponse:
    """Serves a file of SignedFileSystemStorage to whoever holds an unexpired signed URL.
    A bad or expired token answers 404, as an expired S3 URL answers 403: nothing leaks."""
    claims = SignedFileSystemStorage.link_claims(token)
    if claims is None:
        raise Http404("Invalid or expired link")
    storage = downloads_storage()
    if not isinstance(storage, SignedFileSystemStorage) or not storage.exists(claims["key"]):
        raise Http404("No such file")
    response = FileResponse(storage.open(claims["key"], "rb"))
    response["Content-Type"] = safe_content_type(claims["ct"])
    if claims["cd"]:
        response["Content-Disposition"] = claims["cd"]
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    # The origin's bytes are served from the site's own origin: should a browser render
    # them anyway, no script of theirs runs with the site's cookies.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
