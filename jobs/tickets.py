"""Tickets: what a job's `websocket_url` carries instead of a credential.

A URL ends up in proxy and ingress logs, so it must not hold an API key. A ticket is
signed with the secret key under a salt of its own, names one user and one job, and opens
that job's socket only, within WEBSOCKET_TICKET_TTL_S of being minted: it is no session
and no token, so the HTTP API does not take it. Initiate mints one, and so does the status
answer of an active job, for a client that reconnects later than that.
"""

from typing import Any

from django.conf import settings
from django.core import signing

# A value signed for anything else (a session, a signed cookie, a download link) is never
# a ticket, and a ticket is never one of those.
SALT = "realtime.ticket"


def websocket_ticket_mint(*, user_id: int, job_id: str) -> str:
    return signing.dumps({"u": user_id, "j": job_id}, salt=SALT)


def websocket_ticket_user_id(ticket: str, *, job_id: str) -> int | None:
    """The id of the user the ticket was minted for, if it is genuine, not past its TTL,
    and for `job_id`; None otherwise."""
    try:
        payload: Any = signing.loads(ticket, salt=SALT, max_age=settings.WEBSOCKET_TICKET_TTL_S)
    except signing.BadSignature:  # SignatureExpired included
        return None
    if not isinstance(payload, dict) or payload.get("j") != job_id:
        return None
    user_id = payload.get("u")
    return user_id if isinstance(user_id, int) else None
