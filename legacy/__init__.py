"""The old synchronous endpoint, `POST /download/start`, and the old socket login, `?token=`,
in one app, so that retiring them is one deletion.

What is here: the policy of the old endpoint (`policy.py`: retired or not, who is moved
at once, its headers, the count of its callers), its two views (`apis.py`, on the public
seam of `jobs.api.views`), their routes (`urls.py`), its callers' rows (`models.py`,
table `jobs_legacycaller`) and their admin page, the ASGI wait that holds a request on
the event loop until its job ends (`wait.py`), and the `?token=` of a job's socket
(`socket_login.py`). The project mounts it in three places, and nothing else imports it:
`INSTALLED_APPS`, the `include("legacy.urls")` of downloads_project/urls.py, and two lines
of downloads_project/asgi.py (the import of `legacy.asgi` and the line that wraps the HTTP
application and the socket routes).

Retiring it (docs/operations.md "Retiring the old endpoint"): delete this folder, its line
in INSTALLED_APPS, its URL include and its two lines in asgi.py. The callers' table stays
in the database with its counts until it is dropped (`DROP TABLE jobs_legacycaller`), and
`manage.py remove_stale_contenttypes` forgets its content type and permissions.
"""
