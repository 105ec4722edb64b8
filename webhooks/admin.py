"""The admin of webhooks: endpoints and deliveries per user, filtered by failed and disabled,
with actions to redeliver and to disable. Secrets are never shown: neither field is on any
page (they are `editable=False` on the model) and the list shows none."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint


class DisabledFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "disabled"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "disabled"), ("no", "enabled")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]
    ) -> QuerySet[WebhookEndpoint]:
        if self.value() == "yes":
            return queryset.filter(disabled_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(disabled_at__isnull=True)
        return queryset


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("public_id", "owner", "url", "events", "disabled_at", "disabled_reason", "created_at")
    list_filter = (DisabledFilter,)
    list_select_related = ("owner",)
    search_fields = ("=owner__username", "=public_id", "url")
    search_help_text = "A username, an endpoint id (ep_…) or part of a URL."
    raw_id_fields = ("owner",)
    readonly_fields = ("public_id", "created_at", "updated_at", "disabled_at", "disabled_reason")
    actions = ("disable",)

    @admin.action(description="Disable the selected endpoints")
    def disable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            services.webhook_endpoint_disable(endpoint=endpoint, reason="Disabled by an operator")
        self.message_user(request, f"Disabled {queryset.count()} endpoint(s).", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "message_id",
        "owner",
        "endpoint",
        "event",
        "job_id",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "event")
    list_select_related = ("endpoint__owner",)
    search_fields = ("=endpoint__owner__username", "=message_id", "=job_id", "=endpoint__public_id")
    search_help_text = "A username, a delivery id (msg_…), a job id or an endpoint id."
    ordering = ("-created_at",)
    show_full_result_count = False
    actions = ("redeliver",)
    readonly_fields = tuple(field.name for field in WebhookDelivery._meta.fields)

    @admin.display(description="user", ordering="endpoint__owner__username")
    def owner(self, delivery: WebhookDelivery) -> str:
        return delivery.endpoint.owner.get_username()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Redeliver the selected deliveries (delivered or failed)")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        sent = 0
        for delivery in queryset.exclude(status=DeliveryStatus.PENDING):
            try:
                services.webhook_delivery_redeliver(delivery=delivery)
                sent += 1
            except services.DeliveryInFlight:
                continue
        self.message_user(request, f"Sent {sent} delivery(ies) again.", messages.SUCCESS)
