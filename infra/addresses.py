"""Where an outbound request may go: the check that an address is public, the parsing of
an allow-list of `host` / `host:port`, and a request pinned to an address checked just
now (so a name cannot resolve to a public address for the check and to an internal one
for the connection). The origin's redirects (jobs/transfer/origins/http.py) and the
webhook sender (webhooks/sending.py) both go through it.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressUnresolved(Exception):
    """The host has no address (the lookup failed)."""


class AddressNotPublic(Exception):
    """The host resolves to at least one address that is not public."""


def address_is_public(address: str) -> bool:
    """False for an address of this machine or its networks: loopback, private, link-local
    (the metadata services at 169.254.169.254 and fd00:ec2::254 among them), shared (carrier
    NAT), reserved (IPv4-mapped IPv6 among them), multicast and unspecified ones."""
    ip = ipaddress.ip_address(address)
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def host_key(host: str) -> str:
    """A host as compared: an IP address in its canonical form, a name in lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def endpoint(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host as compared, port) of `url`."""
    return url.scheme, host_key(url.host), url.port or DEFAULT_PORTS[url.scheme]


def allowed_host(entry: str, *, setting: str) -> tuple[str, int | None]:
    """An allow-list entry, `host` or `host:port` (an IPv6 address in brackets), as (host,
    port or None). `setting` names the list in the error."""
    parts = urlsplit(f"//{entry.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname or port == 0 or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{setting}: {entry!r} is not a host or host:port")
    return host_key(parts.hostname), port


def host_allowed(url: httpx.URL, allowed: frozenset[tuple[str, int | None]]) -> bool:
    """Whether `url`'s host is on the list: as `host:port`, or as `host` on its scheme's
    own port."""
    scheme, host, port = endpoint(url)
    return (host, port) in allowed or ((host, None) in allowed and port == DEFAULT_PORTS[scheme])


def resolved_addresses(url: httpx.URL) -> list[str]:
    """The addresses of `url`'s host, resolved once, in the resolver's order."""
    port = url.port or DEFAULT_PORTS[url.scheme]
    try:
        found = socket.getaddrinfo(url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressUnresolved(url.host) from exc
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


def public_addresses(url: httpx.URL) -> list[str]:
    """The addresses of `url`'s host, resolved once; refused unless every one is public."""
    addresses = resolved_addresses(url)
    if not all(address_is_public(address) for address in addresses):
        raise AddressNotPublic(url.host)
    return addresses


def pinned_request(
    http: httpx.Client, method: str, url: httpx.URL, address: str, **kwargs: object
) -> httpx.Request:
    """A request of `url` sent to `address` (one checked just now), under the URL's own
    name: its Host header, and TLS's server name and certificate check."""
    headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
    headers["Host"] = url.netloc.decode("ascii")
    return http.build_request(
        method,
        url.copy_with(host=address),
        headers=headers,
        extensions={"sni_hostname": url.raw_host.decode("ascii")},
        **kwargs,  # type: ignore[arg-type]
    )
