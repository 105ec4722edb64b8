"""The callers' model, taken over from `jobs` (its migration 0010 lets it go) without
touching the table: `jobs_legacycaller` keeps its name, its indexes and its rows. Its
content type moves with it, so the permissions given on it (and the admin's log of it)
still hold."""

from typing import Any

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODEL = "legacycaller"


def _content_type_move(apps: Any, schema_editor: Any, *, source: str, target: str) -> None:
    content_types = apps.get_model("contenttypes", "ContentType").objects.using(
        schema_editor.connection.alias
    )
    if not content_types.filter(app_label=target, model=MODEL).exists():
        content_types.filter(app_label=source, model=MODEL).update(app_label=target)


def content_type_to_legacy(apps: Any, schema_editor: Any) -> None:
    _content_type_move(apps, schema_editor, source="jobs", target="legacy")


def content_type_to_jobs(apps: Any, schema_editor: Any) -> None:
    _content_type_move(apps, schema_editor, source="legacy", target="jobs")


class Migration(migrations.Migration):
    initial = True

    dependencies = [  # noqa: RUF012 (as Django declares them)
        ("jobs", "0010_legacycaller_to_legacy"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [  # noqa: RUF012
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="LegacyCaller",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("user_agent", models.CharField(blank=True, max_length=255)),
                        ("calls", models.PositiveIntegerField(default=0)),
                        ("first_seen", models.DateTimeField()),
                        ("last_seen", models.DateTimeField()),
                        (
                            "redirected",
                            models.PositiveIntegerField(
                                default=0, help_text="Finished in time: 302 to the file."
                            ),
                        ),
                        (
                            "accepted",
                            models.PositiveIntegerField(
                                default=0, help_text="Not finished in time: 202, new flow."
                            ),
                        ),
                        (
                            "moved",
                            models.PositiveIntegerField(
                                default=0, help_text="In LEGACY_ASYNC_PERCENT: 202 at once."
                            ),
                        ),
                        (
                            "failed",
                            models.PositiveIntegerField(
                                default=0, help_text="The job failed or was cancelled."
                            ),
                        ),
                        (
                            "refused",
                            models.PositiveIntegerField(
                                default=0, help_text="Bad request, limit or credentials."
                            ),
                        ),
                        ("gone", models.PositiveIntegerField(default=0, help_text="After retirement: 410.")),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="legacy_calls",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "legacy caller",
                        "verbose_name_plural": "Legacy callers",
                        "db_table": "jobs_legacycaller",
                        "indexes": [models.Index(fields=["-last_seen"], name="idx_legacy_last_seen")],
                        "constraints": [
                            models.UniqueConstraint(fields=("user", "user_agent"), name="uniq_legacy_caller")
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_to_legacy, content_type_to_jobs),
    ]
