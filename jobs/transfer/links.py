"""Links to the files of local storage: signed, with an expiry, as S3's presigned URLs are.

`SignedFileSystemStorage` is the downloads storage of the embedded default. Its `url`
answers as S3Storage's does (`url(name, parameters=..., expire=...)`), so callers never
branch on the storage; the link is served by `jobs.web.signed_links.file_download`, which reads
the link's claims here and hands the bytes to nginx or the web process's loop by an
internal path that only this module makes and reads.
"""

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from django.core import signing
from django.core.files.storage import FileSystemStorage
from django.urls import reverse

# Kept as first named: links signed before the module moved stay valid.
_URL_SALT = "jobs.storage.download-url"
# Where a signed link's view sends the bytes to be served from (X-Accel-Redirect): an
# internal nginx location aliased to the storage's directory, or the web process's loop
# (edge/file_sender.py). Never a path a client can ask for.
INTERNAL_FILES_PREFIX = "/internal/files/"


class SignedFileSystemStorage(FileSystemStorage):
    """Local files whose URLs are signed and expire, like S3 presigned URLs."""

    def url(
        self,
        name: str | None,
        parameters: dict[str, str] | None = None,
        expire: int | None = None,
    ) -> str:
        if name is None:
            raise ValueError("name is required")
        parameters = parameters or {}
        token = signing.dumps(
            {
                "key": name,
                "exp": int(time.time()) + (expire if expire is not None else 900),
                "cd": parameters.get("ResponseContentDisposition", ""),
                "ct": parameters.get("ResponseContentType", ""),
            },
            salt=_URL_SALT,
            compress=True,
        )
        return reverse("file-download", kwargs={"token": token})

    def internal_url(self, name: str) -> str:
        """The X-Accel-Redirect target that serves the file `name`."""
        return INTERNAL_FILES_PREFIX + quote(name)

    def internal_path(self, url: str) -> Path | None:
        """The file an `internal_url` names, or None if `url` is not one or its path
        leaves the storage's directory (names come from signed links: checked anyway)."""
        if not url.startswith(INTERNAL_FILES_PREFIX):
            return None
        root = Path(self.location).resolve()
        path = (root / unquote(url.removeprefix(INTERNAL_FILES_PREFIX))).resolve()
        return path if path.is_relative_to(root) and path != root else None

    @staticmethod
    def link_claims(token: str) -> dict[str, Any] | None:
        """What a signed link says (key, content disposition and type), or None if it is
        forged or expired."""
        try:
            claims: dict[str, Any] = signing.loads(token, salt=_URL_SALT)
        except signing.BadSignature:
            return None
        return claims if claims["exp"] >= time.time() else None
