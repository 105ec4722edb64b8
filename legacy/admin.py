"""The operators' view of who still calls the old `POST /download/start` (legacy/policy.py):
each user and User-Agent, how many calls, first and last seen, and the outcome mix, most
recent first, so they know whom to warn before the sunset. Read-only: the rows are counts
that the endpoint keeps."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from legacy.models import LegacyCaller


@admin.register(LegacyCaller)
class LegacyCallerAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "user_agent",
        "calls",
        "first_seen",
        "last_seen",
        "outcome_mix",
    )
    list_select_related = ("user",)
    search_fields = ("=user__username", "user_agent")
    search_help_text = "A username, or part of a User-Agent."
    ordering = ("-last_seen",)
    date_hierarchy = "last_seen"
    show_full_result_count = False
    fields = (
        "user",
        "user_agent",
        "calls",
        "first_seen",
        "last_seen",
        "redirected",
        "accepted",
        "moved",
        "failed",
        "refused",
        "gone",
    )

    @admin.display(description="outcomes")
    def outcome_mix(self, caller: LegacyCaller) -> str:
        counts = {
            "302 file": caller.redirected,
            "202 waited": caller.accepted,
            "202 moved": caller.moved,
            "failed": caller.failed,
            "refused": caller.refused,
            "410 gone": caller.gone,
        }
        return ", ".join(f"{name} {count}" for name, count in counts.items() if count) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
