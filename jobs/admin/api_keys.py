"""The admin of API keys: listed by their first characters, user, name, creation and last
use; never the key or its digest. Adding one shows the key once, on the page that answers
the form: it is in no message cookie, no session and no later page. DRF's token admin,
which lists keys in clear, is removed while its app stays installed (jobs migration 0009).
"""

from typing import Any

from django.contrib import admin
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from knox.models import get_digest_token
from knox.settings import CONSTANTS
from rest_framework.authtoken.models import TokenProxy

from jobs.models import ApiKey

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created", "last_used")
    list_select_related = ("user",)
    search_fields = ("=user__username", "^token_key", "name")
    search_help_text = "A username, the first characters of a key, or part of a name."
    ordering = ("-created",)
    raw_id_fields = ("user",)
    show_full_result_count = False
    # A key's digest and visible characters are set once, here, and never shown in a form.
    readonly_fields = ("prefix", "created", "last_used")

    @admin.display(description="key starts with", ordering="token_key")
    def prefix(self, api_key: ApiKey) -> str:
        return f"{api_key.token_key}…" if api_key.token_key else "-"

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ("user", "name")
        return ("prefix", "user", "name", "created", "last_used")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        # A key's user is fixed: a key moved to someone else would be that person's key.
        return self.readonly_fields if obj is None else (*self.readonly_fields, "user")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if not change:
            obj.digest, key = get_digest_token()
            obj.token_key = key[: CONSTANTS.TOKEN_KEY_LENGTH]
            request.new_api_key = key  # type: ignore[attr-defined]  # for response_add, once
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        key = getattr(request, "new_api_key", None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New API key",
            "api_key": obj,
            "key": key,
        }
        # The admin's views answer `Cache-Control: no-store` (never_cache): no copy stays behind.
        return TemplateResponse(request, "admin/jobs/apikey/created.html", context)
