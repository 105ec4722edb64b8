"""Rows as tests need them."""

from typing import Any

from django.contrib.auth.models import User

from jobs.models import DownloadJob


def make_job(owner: User, **fields: Any) -> DownloadJob:
    """A job of `owner`, queued on file 70000 with three attempts unless `fields` say
    otherwise, written straight to the table (no service, no dispatch)."""
    fields.setdefault("file_id", 70000)
    fields.setdefault("max_attempts", 3)
    return DownloadJob.objects.create(owner=owner, **fields)
