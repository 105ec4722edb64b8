"""`python -m stack.healthcheck [URL]`: exits 0 when the web process answers
200 on /health, 1 otherwise. The container's HEALTHCHECK (a slim image has no curl).

Django answers 400 to a Host outside ALLOWED_HOSTS, and a probe's own Host (127.0.0.1, a
pod's address) usually is: the request names the first host the settings allow.
"""

import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"


def allowed_host() -> str:
    first = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost").split(",")[0].strip()
    # `.example.com` allows example.com and its subdomains; `*` allows anything.
    return first.lstrip(".*") or "localhost"


def main(url: str = DEFAULT_URL) -> int:
    request = urllib.request.Request(url, headers={"Host": allowed_host()})  # noqa: S310 (a fixed http URL)
    try:
        with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
