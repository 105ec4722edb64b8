"""Which address a request is counted as: the one rule for the initiate rate limits
(jobs/api/ratelimits.py) and the sign-in protection (jobs/web/login_protection.py, and
django-axes through AXES_CLIENT_IP_CALLABLE), so that a client is one client to both.
It stands below both packages, which read it and nothing of each other."""

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """The client's address: from CLIENT_IP_HEADER when one is configured (the entry our
    own proxy wrote, CLIENT_IP_PROXY_COUNT from the right), else the socket's peer. A
    header that is missing or not an address falls back to the peer, never to whatever
    a client wrote. IPv6 clients are counted per /64, the block one host usually holds."""
    address = request.META.get("REMOTE_ADDR") or ""
    if header := settings.CLIENT_IP_HEADER:
        entries = [entry.strip() for entry in request.headers.get(header, "").split(",")]
        entries = [entry for entry in entries if entry]
        count = settings.CLIENT_IP_PROXY_COUNT
        if count >= 1 and len(entries) >= count:
            address = entries[-count]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return request.META.get("REMOTE_ADDR") or "unknown"
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
