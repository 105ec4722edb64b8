"""The throwaway environment a benchmark runs the service in: its own VAR_DIR and database
(SQLite, or a PostgreSQL database of its own: `postgres_database`), migrated, a broker
database of its own so no other worker takes its jobs, and the embedded Redis unless
REDIS_URL is set; the child processes it starts (`Children`), Ctrl-C and SIGTERM unwinding
its cleanup (`run_until_interrupted`), and what runs beside it (`every`,
`raised_open_file_limit`)."""

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import NoReturn

import psutil  # type: ignore[import-untyped]

from bench.report import log

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


def django_setup() -> None:
    """Django, in a subprocess of a benchmark that has the environment of `bench_env`."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
    import django

    django.setup()


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


def run_until_interrupted(main: Callable[[], int], *, announce: bool = True) -> NoReturn:
    """Runs a benchmark's `main` with Ctrl-C and SIGTERM unwinding its cleanup, and exits
    with its code, or 130 when interrupted (saying so, if `announce`)."""
    install_signal_handlers()
    try:
        code = main()
    except KeyboardInterrupt:
        if announce:
            print("\ninterrupted; cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code)


# --- child processes: each in a session of its own, its output in a log --------------------

# Celery logs `<name>@<host> ready.` once it consumes.
CELERY_READY = re.compile(r"\S+@\S+ ready\.")


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, or "(no log)"."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_child(
    argv: list[str], *, env: dict[str, str], log_path: Path, pipes: bool = False
) -> subprocess.Popen[str]:
    """Starts `argv` in the project's root, in a session of its own (Ctrl-C reaches only the
    benchmark, which stops it: `stop_child`), its output appended to `log_path`. With `pipes`,
    its stdin and stdout are text pipes to the benchmark and only its stderr goes to the log."""
    with log_path.open("a") as output:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else output,
            stderr=output if pipes else subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def stop_child(
    process: subprocess.Popen[str], *, graceful_s: float, whole_group: bool = False, name: str = ""
) -> None:
    """Stops a child of `start_child` and whatever it forked: SIGTERM to it (to the leader
    only: Celery then shuts down warm, uvicorn's supervisor stops its workers), or with
    `whole_group` to its whole process group; SIGKILL to the group after `graceful_s`, or at
    once when `graceful_s` is 0. Then SIGKILL to what it had forked that is still alive, and
    its pipes are closed. With `name`, it says when it had to kill."""
    try:
        forked = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        forked = []
    if process.poll() is None:
        # The leader is alive (not reaped), so its process group is still ours to signal.
        with suppress(ProcessLookupError):
            if graceful_s <= 0 or whole_group:
                os.killpg(process.pid, signal.SIGTERM if graceful_s > 0 else signal.SIGKILL)
            else:
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=graceful_s if graceful_s > 0 else 10)
        except subprocess.TimeoutExpired:
            if name:
                log(f"{name} did not stop within {graceful_s:.0f} s of SIGTERM: killed")
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for child in forked:  # psutil checks the identity, so a reused pid is never hit
        with suppress(psutil.NoSuchProcess):
            child.kill()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with suppress(OSError):
                stream.close()


class Children:
    """A benchmark's child processes (`start_child`), each with its log `log_dir/NAME.log`;
    `stop_all` stops those still running, the last started first (register it on the
    benchmark's ExitStack)."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, *, graceful_s: float = 10.0, whole_group: bool = False
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.graceful_s = graceful_s
        self.whole_group = whole_group
        self.running: list[tuple[str, subprocess.Popen[str]]] = []

    def start(
        self, name: str, argv: list[str], *, pipes: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        process = start_child(argv, env=env or self.env, log_path=self.log_path(name), pipes=pipes)
        self.running.append((name, process))
        return process

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return log_tail(self.log_path(name), lines)

    def process(self, name: str) -> subprocess.Popen[str]:
        """The running child of that name (the last started)."""
        return next(process for started, process in reversed(self.running) if started == name)

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def wait_worker_ready(self, name: str, timeout_s: float) -> None:
        """Until the Celery worker `name` consumes; an error if a child exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        path = self.log_path(name)
        while time.monotonic() < deadline:
            self.check_alive()
            if path.exists() and CELERY_READY.search(path.read_text(errors="replace")):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"the Celery worker was not ready within {timeout_s:.0f} s:\n{self.log_tail(name)}"
        )

    def stop(self, process: subprocess.Popen[str], *, graceful_s: float | None = None) -> None:
        name = next((started for started, running in self.running if running is process), "")
        graceful = self.graceful_s if graceful_s is None else graceful_s
        stop_child(process, graceful_s=graceful, whole_group=self.whole_group, name=name)
        self.running = [(started, running) for started, running in self.running if running is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self.running)):
            self.stop(process)


# --- beside the benchmark --------------------------------------------------------------------


@contextmanager
def every(interval_s: float, action: Callable[[], object], *, name: str) -> Iterator[None]:
    """Calls `action` in a thread at once and then every `interval_s` while the block runs,
    until the block ends or `action` returns False."""
    stop = threading.Event()

    def loop() -> None:
        while action() is not False and not stop.wait(interval_s):
            pass

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def raised_open_file_limit(wanted: int | None = None) -> Iterator[int]:
    """Raises this process's soft limit of open files (children inherit it) toward `wanted`,
    or to the hard limit (65536 when there is none)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    new = soft if soft >= wanted else (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        yield new
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
