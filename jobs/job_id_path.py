"""What the routes take as a job id, over HTTP (`jobs/api/urls.py`'s `JobIdConverter`) and
on the WebSocket (`realtime/routing.py`): one rule for both protocols, in a module that
belongs to neither, so that the WebSocket routes read nothing of the REST API's.

A path with anything else matches no route (404, or 4404 on the socket). The rule is
wider than the ids themselves (`job_` + lowercase hex, `models.new_job_id`), so that a
well-formed id that names no job of the caller's is answered JOB_NOT_FOUND."""

JOB_ID_PATH_REGEX = "[A-Za-z0-9_-]{1,64}"
