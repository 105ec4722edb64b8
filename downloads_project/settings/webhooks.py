"""Webhooks (webhooks/): who may be called back, how often a delivery is tried, and how
long a rotated secret keeps signing."""

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import env

# An endpoint's URL must be https, or also http with WEBHOOK_ALLOW_HTTP, and resolve only
# to public addresses, checked at creation and again at each delivery (the request goes to
# the address checked). WEBHOOK_ALLOWED_HOSTS ("host" on its scheme's port, "host:port")
# lets an operator allow receivers on internal addresses.
WEBHOOK_ALLOW_HTTP = env.bool("WEBHOOK_ALLOW_HTTP", default=False)
WEBHOOK_ALLOWED_HOSTS = env.list("WEBHOOK_ALLOWED_HOSTS", default=[])
WEBHOOK_MAX_PER_USER = env.int("WEBHOOK_MAX_PER_USER", default=10)
# Delays before each attempt of a delivery, the first at once; past the last, failed.
# The Standard Webhooks schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
WEBHOOK_RETRY_SCHEDULE_S = [
    float(delay)
    for delay in env.list("WEBHOOK_RETRY_SCHEDULE_S", default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000])
]
if not WEBHOOK_RETRY_SCHEDULE_S or any(delay < 0 for delay in WEBHOOK_RETRY_SCHEDULE_S):
    raise ImproperlyConfigured("WEBHOOK_RETRY_SCHEDULE_S must list one or more delays of 0 s or more")
WEBHOOK_RETRY_JITTER = env.float("WEBHOOK_RETRY_JITTER", default=0.1)  # each delay +/- 10 %
WEBHOOK_TIMEOUT_S = env.float("WEBHOOK_TIMEOUT_S", default=10.0)
# After a rotation the old secret signs beside the new one this long (two signatures).
WEBHOOK_ROTATION_OVERLAP_S = env.int("WEBHOOK_ROTATION_OVERLAP_S", default=24 * 3600)
# How often beat's reaper sends the deliveries that are due (an attempt's countdown was
# lost with the broker, a worker died before the send) and how long a claimed attempt is
# held before the reaper takes it back (past the timeout, so never one still in flight).
WEBHOOK_REAP_EVERY_S = env.float("WEBHOOK_REAP_EVERY_S", default=30.0)
WEBHOOK_CLAIM_S = env.float("WEBHOOK_CLAIM_S", default=WEBHOOK_TIMEOUT_S * 3 + 30)
if WEBHOOK_CLAIM_S <= WEBHOOK_TIMEOUT_S:
    raise ImproperlyConfigured("WEBHOOK_CLAIM_S must exceed WEBHOOK_TIMEOUT_S")
