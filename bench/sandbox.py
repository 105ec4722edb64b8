"""The throwaway environment a benchmark runs the service in: its own VAR_DIR and SQLite
database (migrated), a broker database of its own so no other worker takes its jobs, and
the embedded Redis unless REDIS_URL is set."""

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_env(stack: ExitStack, var_dir: Path, *, broker_db: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "DJANGO_SETTINGS", "DATABASE_URL", "CELERY_"))
    }
    if not env.get("REDIS_URL"):
        from downloads_project.embedded import embedded_redis

        env["REDIS_URL"] = stack.enter_context(embedded_redis())
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "downloads_project.settings",
            "VAR_DIR": str(var_dir),
            "DATABASE_URL": f"sqlite:///{var_dir / 'bench.sqlite3'}",
            "CELERY_BROKER_URL": f"{env['REDIS_URL'].rstrip('/')}/{broker_db}",
            "LOG_LEVEL": "WARNING",
        }
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], env=env, cwd=ROOT, check=True
    )
    return env
