"""The firing alerts (jobs/ops/alerts.py) as a banner on every admin page.

A context processor hands the admin's base template a lazy value: the alerts are read
only when a staff member's admin page is drawn, at most once every ADMIN_ALERTS_CACHE_S
per process (an admin page stays cheap however often it is loaded), and a source that
cannot be read, or any fault at all, shows "alerts unknown" instead of failing the page.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import SimpleLazyObject

from jobs.ops.alerts import AlertState, alerts_evaluate

logger = logging.getLogger(__name__)

ADMIN_ALERTS_CACHE_S = 10.0


@dataclass(frozen=True)
class AlertBanner:
    firing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # what could not be read

    def __bool__(self) -> bool:
        return bool(self.firing or self.unknown)


def alert_banner_from(state: AlertState) -> AlertBanner:
    firing, unknown = [], []
    if state.backlog is None:
        unknown.append("the backlog (the broker could not be read)")
    elif state.backlog_firing:
        firing.append(
            f"Backlog: {state.backlog} messages wait in the broker, above the threshold of "
            f"{settings.ALERT_BACKLOG_THRESHOLD}."
        )
    if state.success is None:
        unknown.append("the success rate (the database could not be read)")
    elif state.success_rate_firing and state.success.rate is not None:
        firing.append(
            f"Success rate: {state.success.rate * 100:.1f} % of the {state.success.ended} jobs that ended "
            f"in the last {settings.ALERT_WINDOW_S} s completed, below the threshold of "
            f"{settings.ALERT_SUCCESS_RATE_MIN * 100:.0f} %."
        )
    return AlertBanner(firing=firing, unknown=unknown)


class _Cached:
    """The last banner and when it was read (a clock in seconds, injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.read_at: float | None = None
        self.banner = AlertBanner()

    def get(self) -> AlertBanner:
        with self.lock:
            now = self.clock()
            if self.read_at is None or now - self.read_at >= ADMIN_ALERTS_CACHE_S:
                self.banner = _read()
                self.read_at = now
            return self.banner

    def clear(self) -> None:
        with self.lock:
            self.read_at = None


def _read() -> AlertBanner:
    try:
        return alert_banner_from(alerts_evaluate())
    except Exception:
        logger.warning("admin: could not evaluate the alerts", exc_info=True)
        return AlertBanner(unknown=["every alert (they could not be evaluated)"])


cached = _Cached()


def admin_alerts(request: HttpRequest) -> dict[str, object]:
    """`admin_alerts` for the admin's pages, to staff: read only if the page shows it."""
    if not request.path.startswith(reverse("admin:index")):
        return {}
    user = getattr(request, "user", None)
    if not (user is not None and user.is_active and user.is_staff):
        return {}
    return {"admin_alerts": SimpleLazyObject(cached.get)}
