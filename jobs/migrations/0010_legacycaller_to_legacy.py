# The old endpoint's callers moved to the app `legacy`, which takes the model over in its
# migration 0001. Only Django's idea of the model moves: the table keeps its name
# (jobs_legacycaller) and its rows.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0009_api_keys_from_drf_tokens'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='LegacyCaller')],
            database_operations=[],
        ),
    ]
