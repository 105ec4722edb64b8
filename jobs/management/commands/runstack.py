"""`manage.py runstack`: the whole service on one machine, for trying it out.

Migrates, makes a demo user with an API token, then runs the ASGI server, a Celery worker
and Celery beat as child processes (and a private Redis unless REDIS_URL is set).
Ctrl-C stops them all.
"""

import os
import signal
import subprocess
import time
from contextlib import ExitStack
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from downloads_project import processes
from downloads_project.embedded import embedded_redis
from jobs.ops.metrics import multiprocess_dir_reset


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
            children = {
                name: subprocess.Popen(argv, env=env, start_new_session=True)
                for name, argv in commands.items()
            }
            base = f"http://{host}:{port}"
            self.stdout.write(
                f"\nDownload service on {base}  (Redis {env['REDIS_URL']})\n"
                f"Demo user: demo / demo   API token: {token}\n"
                f"Try:\n  curl -s -X POST {base}/v1/download/initiate -H 'Authorization: Token {token}' "
                f"-H 'Content-Type: application/json' -d '{{\"file_id\": 70000}}'\n"
                "Ctrl-C stops everything.\n"
            )
            self._wait(children)

    def _demo_user(self) -> str:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username="demo")
        if created:
            user.set_password("demo")
            user.save(update_fields=["password"])
        return Token.objects.get_or_create(user=user)[0].key

    def _wait(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while all(child.poll() is None for child in children.values()):
                time.sleep(0.5)
            dead = [name for name, child in children.items() if child.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} stopped; stopping the rest")
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        # The worker stops at once (cold shutdown): its job was not acknowledged, so it
        # is handed back and runs again as a new attempt.
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
