"""`manage.py runstack`: the whole service on one machine, for trying it out.

Migrates, makes a demo user with a fresh API key, then runs the ASGI server, a Celery worker
and Celery beat as child processes (and a private Redis unless REDIS_URL is set).
A worker that dies is started again, as a supervisor or Kubernetes would: its jobs were
not acknowledged, and the reaper sends them again once their heartbeat is stale (they
resume from their stored parts). Web or beat stopping stops everything: they hold no
jobs, and what stops them (a port in use, a broken setting) would stop them again.

Stopping (Ctrl-C or SIGTERM, to this process or to its whole process group, as a
terminal, systemd or a container runtime sends it): the children run in sessions of
their own, so no signal reaches them but the ones sent here, in order: the web server
(no new work comes in), then the worker (warm: it takes no new job and finishes the ones
it runs), then beat, then the private Redis that the others needed. A second signal
means "hurry": what is still stopping is killed, in the same order; the worker's
unfinished jobs stay processing, unacknowledged, and are handed back to the queue by the
reaper once their heartbeat is stale (they resume from their stored parts). Celery's own
answer to a second signal, a cold shutdown, is never used: on the thread pool it cannot
cancel a running job and waits for it anyway.
"""

import os
import signal
import subprocess
import time
from contextlib import ExitStack, suppress
from types import FrameType
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from jobs.api_keys import api_key_create
from jobs.metrics import dead_processes_forget, multiprocess_dir_reset
from jobs.models import ApiKey
from stack import processes
from stack.embedded import embedded_redis

DEMO_KEY_NAME = "runstack demo"

# A worker that dies again soon after its start waits longer each time before the next
# one, so a worker that cannot start (a broken setting, the broker gone) does not spin.
WORKER_RESTART_FIRST_S = 1.0
WORKER_RESTART_MAX_S = 30.0
# A worker that ran this long before dying starts its backoff over.
WORKER_HEALTHY_S = 60.0

# How long each child may take to stop before it is killed. The web server closes its
# connections within its graceful shutdown (WEB_GRACEFUL_S, given to uvicorn); the
# worker finishes its running jobs, each within its hard time limit (its warm-shutdown
# budget); beat holds nothing.
WEB_GRACEFUL_S = 10
WEB_STOP_S = WEB_GRACEFUL_S + 10.0
BEAT_STOP_S = 10.0
STOP_ORDER = ("web", "worker", "beat")


def worker_stop_s() -> float:
    return settings.JOB_HARD_TIME_LIMIT_S + 30.0


class StopRequests:
    """SIGTERM and SIGINT, counted rather than raised: a signal that lands anywhere (during
    migrate, a child's start, or the stop itself) neither unwinds the command half way,
    leaving children behind, nor prints a traceback. The first asks for the ordered stop,
    a second to hurry it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.count >= 1

    @property
    def hurry(self) -> bool:
        return self.count >= 2

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


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
        stop = StopRequests()
        stop.install()
        call_command("migrate", interactive=False, verbosity=0)
        token = self._demo_user()
        if stop.requested:
            return
        with ExitStack() as stack:
            env = dict(os.environ)
            if not env.get("REDIS_URL"):
                # Stopped last (the stack unwinds after the children's stop): they need it
                # to stop cleanly.
                redis_url = stack.enter_context(embedded_redis())
                stack.callback(self.stdout.write, "redis stopping")
                env["REDIS_URL"] = redis_url
            # Every child writes its metrics here and /metrics adds them up; a new start
            # must not count the last run's processes.
            env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.VAR_DIR / "prometheus"))
            multiprocess_dir_reset(env["PROMETHEUS_MULTIPROC_DIR"])
            # uvicorn's access log is on: settings.LOGGING takes over uvicorn's loggers when
            # the app loads, and its handler redacts tickets, tokens and other secrets.
            commands = {
                "web": processes.web_argv(
                    host=host, port=port, extra=("--timeout-graceful-shutdown", str(WEB_GRACEFUL_S))
                ),
                "worker": processes.worker_argv(concurrency=concurrency),
                "beat": processes.beat_argv(schedule=settings.VAR_DIR / "celerybeat-schedule"),
            }
            children: dict[str, subprocess.Popen[bytes]] = {}
            try:
                for name, argv in commands.items():
                    if stop.requested:
                        return
                    children[name] = _start(argv, env)
                base = f"http://{host}:{port}"
                self.stdout.write(
                    f"\nDownload service on {base}  (Redis {env['REDIS_URL']})\n"
                    f"Demo user: demo / demo   API token: {token}\n"
                    f"Try:\n  curl -s -X POST {base}/v1/download/initiate -H 'Authorization: Bearer {token}' "
                    f"-H 'Content-Type: application/json' -d '{{\"file_id\": 70000}}'\n"
                    "Ctrl-C stops everything (a second Ctrl-C hurries it).\n"
                )
                self._supervise(children, stop, worker_argv=commands["worker"], env=env)
            finally:
                self._stop(children, stop)

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
        stop: StopRequests,
        *,
        worker_argv: list[str],
        env: dict[str, str],
    ) -> None:
        """Runs until Ctrl-C, SIGTERM, or web or beat stopping; starts the worker again
        whenever it dies, after a backoff that grows while it keeps dying young."""
        worker_started_at = time.monotonic()
        restart_at: float | None = None
        delay_s: float | None = None
        while not stop.requested:
            dead = [name for name in ("web", "beat") if children[name].poll() is not None]
            if dead:
                self.stderr.write(f"{', '.join(dead)} stopped; stopping the rest")
                return
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

    def _stop(self, children: dict[str, subprocess.Popen[bytes]], stop: StopRequests) -> None:
        """Stops the children one after the other, each given its budget (then killed),
        each session's last process killed after it: no orphan is left, even of a prefork
        pool. A second signal kills what is still stopping."""
        self.stdout.write("Stopping… (again to hurry)")
        budgets = {"web": WEB_STOP_S, "worker": worker_stop_s(), "beat": BEAT_STOP_S}
        for name in STOP_ORDER:
            child = children.get(name)
            if child is None:
                continue
            if child.poll() is None:
                if stop.hurry:
                    _kill_group(child)
                else:
                    child.send_signal(signal.SIGTERM)
                    self._wait(child, stop, budget_s=budgets[name])
            child.wait()
            _kill_group(child)
            self.stdout.write(f"{name} stopped ({_exit_described(child.returncode)})")

    def _wait(self, child: subprocess.Popen[bytes], stop: StopRequests, *, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        while child.poll() is None:
            if stop.hurry or time.monotonic() >= deadline:
                _kill_group(child)
                return
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: a signal to runstack's process group does not reach it.
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of a child's session (it leads its own process group)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
