"""`manage.py runstack`: the whole service on one machine, for trying it out.

Migrates, makes a demo user with a fresh API key, then runs the ASGI server, a Celery worker
and Celery beat as child processes (and a private Redis unless REDIS_URL is set).
A worker that dies is started again, as a supervisor or Kubernetes would: its jobs were
not acknowledged, and the reaper sends them again once their heartbeat is stale (they
resume from their stored parts). Web or beat stopping stops everything: they hold no
jobs, and what stops them (a port in use, a broken setting) would stop them again.
Ctrl-C or SIGTERM stops them all.
"""

import os
import signal
import subprocess
import time
from contextlib import ExitStack, suppress
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from downloads_project import processes
from downloads_project.embedded import embedded_redis
from jobs.api_keys import api_key_create
from jobs.models import ApiKey
from jobs.ops.metrics import dead_processes_forget, multiprocess_dir_reset

DEMO_KEY_NAME = "runstack demo"

# A worker that dies again soon after its start waits longer each time before the next
# one, so a worker that cannot start (a broken setting, the broker gone) does not spin.
WORKER_RESTART_FIRST_S = 1.0
WORKER_RESTART_MAX_S = 30.0
# A worker that ran this long before dying starts its backoff over.
WORKER_HEALTHY_S = 60.0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def worker_restart_delay_s(*, previous_s: float | None, uptime_s: float) -> float:
    """How long to wait before starting a worker again, after the last wait was
    `previous_s` (None: this is its first death) and the worker ran `uptime_s`."""
    if previous_s is None or uptime_s >= WORKER_HEALTHY_S:
        return WORKER_RESTART_FIRST_S
    return min(previous_s * 2, WORKER_RESTART_MAX_S)


def _exit_described(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class Command(BaseCommand):
    help = "Run the web server, a worker and beat together (the embedded default)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--concurrency", type=int, default=None, help="jobs the worker runs at once (WORKER_CONCURRENCY)"
        )

    def handle(self, *args: Any, host: str, port: int, concurrency: int | None, **options: Any) -> None:
        if host not in settings.LOOPBACK_HOSTS and settings.SECRET_KEY == settings.EMBEDDED_SECRET_KEY:
            raise CommandError(
                f"--host {host} serves beyond this machine: set DJANGO_SECRET_KEY to a long random value "
                "(and DJANGO_ALLOWED_HOSTS to the names clients use)"
            )
        call_command("migrate", interactive=False, verbosity=0)
        token = self._demo_user()
        with ExitStack() as stack:
            env = dict(os.environ)
            if not env.get("REDIS_URL"):
                env["REDIS_URL"] = stack.enter_context(embedded_redis())
            # Every child writes its metrics here and /metrics adds them up; a new start
            # must not count the last run's processes.
            env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.VAR_DIR / "prometheus"))
            multiprocess_dir_reset(env["PROMETHEUS_MULTIPROC_DIR"])
            # uvicorn's access log is on: settings.LOGGING takes over uvicorn's loggers when
            # the app loads, and its handler redacts tickets, tokens and other secrets.
            commands = {
                "web": processes.web_argv(host=host, port=port),
                "worker": processes.worker_argv(concurrency=concurrency),
                "beat": processes.beat_argv(schedule=settings.VAR_DIR / "celerybeat-schedule"),
            }
            # Own sessions: Ctrl-C reaches only this command, which stops the children in
            # order (the worker before the Redis it needs), not all at once.
            children = {name: _start(argv, env) for name, argv in commands.items()}
            base = f"http://{host}:{port}"
            self.stdout.write(
                f"\nDownload service on {base}  (Redis {env['REDIS_URL']})\n"
                f"Demo user: demo / demo   API token: {token}\n"
                f"Try:\n  curl -s -X POST {base}/v1/download/initiate -H 'Authorization: Token {token}' "
                f"-H 'Content-Type: application/json' -d '{{\"file_id\": 70000}}'\n"
                "Ctrl-C stops everything.\n"
            )
            self._supervise(children, worker_argv=commands["worker"], env=env)

    def _demo_user(self) -> str:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username="demo")
        if created:
            user.set_password("demo")
            user.save(update_fields=["password"])
        # Keys are stored as digests: the last run's key cannot be printed again, so each
        # start replaces it with a new one.
        ApiKey.objects.filter(user=user, name=DEMO_KEY_NAME).delete()
        return api_key_create(user=user, name=DEMO_KEY_NAME)[1]

    def _supervise(
        self,
        children: dict[str, subprocess.Popen[bytes]],
        *,
        worker_argv: list[str],
        env: dict[str, str],
    ) -> None:
        """Runs until Ctrl-C, SIGTERM, or web or beat stopping; starts the worker again
        whenever it dies, after a backoff that grows while it keeps dying young."""
        signal.signal(signal.SIGTERM, _interrupt)
        worker_started_at = time.monotonic()
        restart_at: float | None = None
        delay_s: float | None = None
        try:
            while True:
                dead = [name for name in ("web", "beat") if children[name].poll() is not None]
                if dead:
                    self.stderr.write(f"{', '.join(dead)} stopped; stopping the rest")
                    break
                now = time.monotonic()
                returncode = children["worker"].poll()
                if returncode is not None and restart_at is None:
                    # A prefork worker's pool children outlive their parent for a moment:
                    # none of them may go on running a job that the new worker runs too.
                    _kill_group(children["worker"])
                    delay_s = worker_restart_delay_s(previous_s=delay_s, uptime_s=now - worker_started_at)
                    restart_at = now + delay_s
                    self.stderr.write(
                        f"worker stopped ({_exit_described(returncode)}); starting it again in {delay_s:g} s"
                    )
                if restart_at is not None and now >= restart_at:
                    # The dead worker's jobs in flight are no longer in flight.
                    dead_processes_forget(env["PROMETHEUS_MULTIPROC_DIR"])
                    children["worker"] = _start(worker_argv, env)
                    worker_started_at, restart_at = now, None
                    self.stderr.write(f"worker started again (pid {children['worker'].pid})")
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        # The worker stops at once (cold shutdown): its jobs were not acknowledged, so they
        # are handed back and run again as new attempts.
        stop_signals = {"worker": signal.SIGQUIT, "web": signal.SIGTERM, "beat": signal.SIGTERM}
        for name, child in children.items():
            if child.poll() is None:
                child.send_signal(stop_signals[name])
        for child in children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of a child's session (it leads its own process group)."""
    with suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
