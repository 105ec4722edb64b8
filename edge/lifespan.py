"""The web process's ASGI lifespan: it refuses to start on the embedded secret key unless
the server listens on this machine's loopback only.

The embedded key (settings.EMBEDDED_SECRET_KEY) is in the repository: whoever reaches a
server that signs with it can forge a session or a `/files/` link. ALLOWED_HOSTS does not
keep them out, since a client writes whatever Host it likes; where the server listens does.
uvicorn runs the lifespan's startup before it binds, so the address is read from its
configuration (the server that sent the startup); a server whose address cannot be read is
refused as well. With a key of its own the process starts wherever it listens.
"""

import ipaddress
import os
import socket
from typing import Any

from django.conf import settings
from uvicorn import Config


class WebLifespan:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if (refusal := embedded_key_refusal(receive)) is not None:
                    await send({"type": "lifespan.startup.failed", "message": refusal})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def embedded_key_refusal(receive: Any) -> str | None:
    """Why this process must not serve, or None: the embedded key beyond loopback."""
    if settings.SECRET_KEY != settings.EMBEDDED_SECRET_KEY:
        return None
    hosts = _listen_hosts(receive)
    if hosts is None:
        where = "an address this server does not tell"
    elif outside := [host for host in hosts if not _is_loopback(host)]:
        where = ", ".join(outside)
    else:
        return None
    return (
        f"The embedded secret key is public and this web process would listen on {where}: "
        "set DJANGO_SECRET_KEY to a long random value (50+ characters), or listen on 127.0.0.1"
    )


def _listen_hosts(receive: Any) -> list[str] | None:
    """The hosts uvicorn listens on (none for a Unix socket), from the configuration of
    the server whose lifespan `receive` belongs to; None for any other server."""
    config = getattr(getattr(receive, "__self__", None), "config", None)
    if not isinstance(config, Config):
        return None
    if config.uds is not None:
        return []
    if config.fd is not None:
        with socket.socket(fileno=os.dup(config.fd)) as sock:
            name = sock.getsockname()
        return [] if isinstance(name, str) else [name[0]]
    return [config.host]


def _is_loopback(host: str) -> bool:
    if host in settings.LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
