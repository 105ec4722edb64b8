"""What a signed link's answer serves, read in-process (Django's test client): the view
answers with headers and `X-Accel-Redirect`; the bytes are those of the file it names, as
edge/file_sender.py (or nginx) sends them."""

from typing import Any

from jobs.transfer.links import SignedFileSystemStorage
from jobs.transfer.storage import downloads_storage


def served_bytes(response: Any) -> bytes:
    assert response.content == b""
    storage = downloads_storage()
    assert isinstance(storage, SignedFileSystemStorage)
    path = storage.internal_path(response["X-Accel-Redirect"])
    assert path is not None, response["X-Accel-Redirect"]
    return path.read_bytes()
