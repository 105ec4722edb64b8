"""The throwaway environment a benchmark runs the service in: its own VAR_DIR and SQLite
database (migrated), a broker database of its own so no other worker takes its jobs, and
the embedded Redis unless REDIS_URL is set."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

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


def results_save(name: str, data: Any) -> Path:
    """Writes a run's figures to bench/results/<name>-<time>.json (git ignores them)."""
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    path = results_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
