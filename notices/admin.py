from django.contrib import admin

from notices.models import EmailNotice, NotificationPreference


@admin.register(EmailNotice)
class EmailNoticeAdmin(admin.ModelAdmin):
    list_display = ("job", "recipient", "event", "due_at", "attempts", "sent_at", "failed_at")
    list_filter = (
        "event",
        ("sent_at", admin.EmptyFieldListFilter),
        ("failed_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("job__job_id", "recipient")
    list_select_related = ("job",)
    readonly_fields = tuple(f.name for f in EmailNotice._meta.fields)


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "email_when_finished", "updated_at")
    search_fields = ("user__username", "user__email")
