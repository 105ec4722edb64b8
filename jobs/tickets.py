"""Tickets: what a job's `websocket_url` carries instead of a credential.

A URL ends up in proxy and ingress logs, so it must not hold an API key. A ticket is
signed with the secret key under a salt of its own, names one user and one job, and opens
that job's socket only, within WEBSOCKET_TICKET_TTL_S of being minted: it is no session
and no token, so the HTTP API does not take it. Initiate mints one, and so does the status
answer of an active job, for a client that reconnects later than that.

A ticket minted for a request made with an API key names that key too, and opens nothing
once the key is deleted: revoking a key revokes the tickets minted with it.
"""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing

# A value signed for anything else (a session, a signed cookie, a download link) is never
# a ticket, and a ticket is never one of those.
SALT = "realtime.ticket"


@dataclass(frozen=True)
class Ticket:
    user_id: int
    # The API key of the request that minted it (jobs.models.ApiKey's id); None when that
    # request was signed in with the session.
    api_key_id: int | None


def websocket_ticket_mint(*, user_id: int, job_id: str, api_key_id: int | None = None) -> str:
    claims: dict[str, Any] = {"u": user_id, "j": job_id}
    if api_key_id is not None:
        claims["k"] = api_key_id
    return signing.dumps(claims, salt=SALT)


def websocket_ticket_read(ticket: str, *, job_id: str) -> Ticket | None:
    """Whom and which key the ticket was minted for, if it is genuine, not past its TTL,
    and for `job_id`; None otherwise."""
    try:
        payload: Any = signing.loads(ticket, salt=SALT, max_age=settings.WEBSOCKET_TICKET_TTL_S)
    except signing.BadSignature:  # SignatureExpired included
        return None
    if not isinstance(payload, dict) or payload.get("j") != job_id:
        return None
    user_id, api_key_id = payload.get("u"), payload.get("k")
    if not isinstance(user_id, int) or not isinstance(api_key_id, int | None):
        return None
    return Ticket(user_id=user_id, api_key_id=api_key_id)
