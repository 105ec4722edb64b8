"""The throwaway environment a benchmark runs the service in: its own VAR_DIR and database
(SQLite, or a PostgreSQL database of its own: `postgres_database`), migrated, a broker
database of its own so no other worker takes its jobs, and the embedded Redis unless
REDIS_URL is set."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent


# The server a PostgreSQL profile creates its throwaway database on (trust auth, as on CI).
POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def postgres_database(stack: ExitStack, name: str) -> str:
    """A fresh PostgreSQL database `name` on BENCH_POSTGRES_URL's server, dropped again
    when `stack` closes; returns its DATABASE_URL."""
    import psycopg

    def run(sql: str) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql)

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    stack.callback(run, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def bench_env(
    stack: ExitStack, var_dir: Path, *, broker_db: int, database_url: str | None = None
) -> dict[str, str]:
    """The service's environment for a benchmark: SQLite in `var_dir` unless
    `database_url` (see `postgres_database`) is given."""
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
            "DATABASE_URL": database_url or f"sqlite:///{var_dir / 'bench.sqlite3'}",
            "CELERY_BROKER_URL": f"{env['REDIS_URL'].rstrip('/')}/{broker_db}",
            "LOG_LEVEL": "WARNING",
        }
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], env=env, cwd=ROOT, check=True
    )
    return env


# --- signals: Ctrl-C and SIGTERM both unwind through `finally`, once -----------------------

# The signals received, first first: a benchmark that runs subprocesses passes SIGTERM on.
interrupted: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if interrupted:
        return  # already unwinding: let the cleanup finish
    interrupted.append(signum)
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def run_until_interrupted(main: Callable[[], int]) -> NoReturn:
    """Runs a benchmark's `main` with Ctrl-C and SIGTERM unwinding its cleanup, and exits
    with its code, or 130 when interrupted."""
    install_signal_handlers()
    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code)


def results_save(name: str, data: Any) -> Path:
    """Writes a run's figures to bench/results/<name>-<time>.json (git ignores them)."""
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    path = results_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
