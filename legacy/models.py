from django.conf import settings
from django.db import models


class LegacyCaller(models.Model):
    """Who still calls the old `POST /download/start` (legacy/policy.py): one row per user and
    User-Agent, counted by outcome, so that operators know whom to warn before its sunset.

    Made by jobs' migration 0007 when the endpoint lived in `jobs`; this app took the model
    over without touching the table (legacy migration 0001), hence its `db_table`."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="legacy_calls")
    user_agent = models.CharField(max_length=255, blank=True)
    calls = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    # One count per outcome of legacy.policy.OUTCOMES.
    redirected = models.PositiveIntegerField(default=0, help_text="Finished in time: 302 to the file.")
    accepted = models.PositiveIntegerField(default=0, help_text="Not finished in time: 202, new flow.")
    moved = models.PositiveIntegerField(default=0, help_text="In LEGACY_ASYNC_PERCENT: 202 at once.")
    failed = models.PositiveIntegerField(default=0, help_text="The job failed or was cancelled.")
    refused = models.PositiveIntegerField(default=0, help_text="Bad request, limit or credentials.")
    gone = models.PositiveIntegerField(default=0, help_text="After retirement: 410.")

    class Meta:
        db_table = "jobs_legacycaller"
        verbose_name = "legacy caller"
        verbose_name_plural = "Legacy callers"
        constraints = (models.UniqueConstraint(fields=["user", "user_agent"], name="uniq_legacy_caller"),)
        indexes = (models.Index(fields=["-last_seen"], name="idx_legacy_last_seen"),)

    def __str__(self) -> str:
        return f"{self.user_id} {self.user_agent}"
