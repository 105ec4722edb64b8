# download_analytics as a PostgreSQL materialized view, plus the
# unmanaged model over it. On SQLite the view is not made: the selector computes the same
# figures in Python. The unique index on hour is what REFRESH ... CONCURRENTLY requires.
# Hours are truncated in UTC whatever the session time zone, and the 7-day window is
# evaluated at each refresh (beat refreshes every minute).

from django.db import migrations, models

CREATE_VIEW = """
CREATE MATERIALIZED VIEW download_analytics AS
SELECT
    date_trunc('hour', created_at, 'UTC') AS hour,
    count(*) AS total_jobs,
    count(*) FILTER (WHERE status = 'completed') AS completed,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
    avg(duration_seconds) FILTER (WHERE status = 'completed') AS avg_duration_s,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)
        FILTER (WHERE status = 'completed') AS p50_duration_s,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds)
        FILTER (WHERE status = 'completed') AS p95_duration_s,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds)
        FILTER (WHERE status = 'completed') AS p99_duration_s,
    coalesce(sum(file_size_bytes) FILTER (WHERE status = 'completed'), 0)::bigint AS bytes_staged
FROM jobs_downloadjob
WHERE created_at >= now() - interval '7 days'
GROUP BY 1
WITH DATA
"""
CREATE_INDEX = "CREATE UNIQUE INDEX download_analytics_hour_uniq ON download_analytics (hour)"
DROP_VIEW = "DROP MATERIALIZED VIEW IF EXISTS download_analytics"


def create_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_VIEW)
        schema_editor.execute(CREATE_INDEX)


def drop_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_VIEW)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0002_downloadjob_heartbeat_at_downloadjob_task_id"),
    ]

    operations = [
        migrations.CreateModel(
            name="DownloadAnalyticsHour",
            fields=[
                ("hour", models.DateTimeField(primary_key=True, serialize=False)),
                ("total_jobs", models.BigIntegerField()),
                ("completed", models.BigIntegerField()),
                ("failed", models.BigIntegerField()),
                ("cancelled", models.BigIntegerField()),
                ("avg_duration_s", models.FloatField(null=True)),
                ("p50_duration_s", models.FloatField(null=True)),
                ("p95_duration_s", models.FloatField(null=True)),
                ("p99_duration_s", models.FloatField(null=True)),
                ("bytes_staged", models.BigIntegerField()),
            ],
            options={
                "db_table": "download_analytics",
                "ordering": ["-hour"],
                "managed": False,
            },
        ),
        migrations.RunPython(create_view, drop_view),
    ]
