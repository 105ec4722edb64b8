"""Where prepared files are kept (S3, or local files with signed links) and how a worker
stages them (chunks, parts, its memory and spool budgets)."""

from botocore.config import Config as BotoConfig
from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import VAR_DIR, env
from downloads_project.settings.jobs import PRESIGNED_URL_TTL_S
from infra import roles

STAGING_CHUNK_BYTES = env.int("STAGING_CHUNK_BYTES", default=1024 * 1024)
# S3 needs parts of at least 5 MiB (but the last).
STAGING_PART_BYTES = env.int("STAGING_PART_BYTES", default=8 * 1024 * 1024)
# S3 parts of one job handed to the uploads at once while the origin is read (the job waits
# for one to finish before it hands over another).
STAGING_PARTS_IN_FLIGHT = env.int("STAGING_PARTS_IN_FLIGHT", default=4)
# A worker process's S3 parts, whatever its concurrency (jobs/transfer/part_buffers.py): they are
# uploaded by STAGING_UPLOAD_THREADS threads shared by all its jobs, and held in memory up to
# STAGING_MEMORY_BYTES in all. Each part reserves its room whole before its first byte: a
# part that finds no room in memory is filled in a temporary file under STAGING_SPOOL_DIR
# instead, up to STAGING_SPOOL_BYTES in all; past that a job waits for room (within its
# deadline), holding none. STAGING_SPOOL_BYTES=0: parts never go to disk and jobs wait for
# room in memory. Local storage writes its files directly and uses neither.
STAGING_UPLOAD_THREADS = env.int("STAGING_UPLOAD_THREADS", default=16)
STAGING_MEMORY_BYTES = env.int("STAGING_MEMORY_BYTES", default=256 * 1024 * 1024)
STAGING_SPOOL_BYTES = env.int("STAGING_SPOOL_BYTES", default=4 * 1024**3)
STAGING_SPOOL_DIR = env("STAGING_SPOOL_DIR", default="") or None  # None: the system's temporary directory
if STAGING_UPLOAD_THREADS < 1 or STAGING_PARTS_IN_FLIGHT < 1:
    raise ImproperlyConfigured("STAGING_UPLOAD_THREADS and STAGING_PARTS_IN_FLIGHT must be 1 or more")
if max(STAGING_PART_BYTES, 5 * 1024 * 1024) > STAGING_MEMORY_BYTES + STAGING_SPOOL_BYTES:
    raise ImproperlyConfigured(
        "STAGING_MEMORY_BYTES + STAGING_SPOOL_BYTES must hold at least one part (STAGING_PART_BYTES)"
    )

_web = roles.is_web()
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", default="")
DOWNLOADS_LOCATION = "downloads"
if AWS_STORAGE_BUCKET_NAME:
    _downloads_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env("AWS_S3_REGION_NAME", default=None),
            "access_key": env("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env("AWS_SECRET_ACCESS_KEY", default=None),
            "querystring_expire": PRESIGNED_URL_TTL_S,
            # An S3 outage of a few tens of seconds is ridden out inside the attempt: each
            # call is tried AWS_S3_MAX_ATTEMPTS times with botocore's standard backoff
            # (doubling, up to 20 s, jittered), before the attempt fails STORAGE_ERROR and
            # its retry resumes from the stored parts. A web process's few calls (the
            # reuse check of initiate, /ready) have a request's budget instead: 2 tries of
            # 3 s to connect and 5 s to read, well inside a proxy's 60 s.
            "client_config": BotoConfig(
                s3={
                    "addressing_style": env("AWS_S3_ADDRESSING_STYLE", default=None),
                    # botocore signs a part's bytes (SHA-256, as much CPU as our own hash)
                    # only over plain http: over https the part's CRC32, which S3 checks,
                    # stands for it. `false` drops it over http too (an endpoint on a private
                    # network), `true` keeps it over https; unset, botocore decides.
                    **(
                        {"payload_signing_enabled": env.bool("AWS_S3_PAYLOAD_SIGNING")}
                        if env("AWS_S3_PAYLOAD_SIGNING", default="")
                        else {}
                    ),
                },
                signature_version="s3v4",
                retries={
                    "mode": "standard",
                    "max_attempts": env.int("AWS_S3_MAX_ATTEMPTS", default=2 if _web else 10),
                },
                connect_timeout=env.float("AWS_S3_CONNECT_TIMEOUT_S", default=3.0 if _web else 10.0),
                read_timeout=env.float("AWS_S3_READ_TIMEOUT_S", default=5.0 if _web else 60.0),
                # A job's client (jobs/transfer/s3_clients.py) serves its own calls and its
                # parts in flight at once.
                max_pool_connections=max(10, STAGING_PARTS_IN_FLIGHT + 2),
            ),
            "file_overwrite": True,
            "default_acl": None,
        },
    }
else:
    _downloads_storage = {
        "BACKEND": "jobs.transfer.links.SignedFileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "media"), "base_url": "/files/"},
    }
# Local storage's signed links (jobs/web/signed_links.py) name their file in X-Accel-Redirect.
# true: nginx sends it from its internal location (deploy/nginx/downloads.conf.template),
# and the web processes must be reachable only through that nginx. false: the web process
# sends it from its event loop (edge/file_sender.py).
FILES_ACCEL_REDIRECT = env.bool("FILES_ACCEL_REDIRECT", default=False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "downloads": _downloads_storage,
}
