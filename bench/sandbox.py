"""The throwaway environment a benchmark runs the service in: its own VAR_DIR and database
(SQLite, or a PostgreSQL database of its own: `postgres_database`; with S3 through
`profile_parts`), migrated, a broker database of its own so no other worker takes its
jobs, and the embedded Redis unless REDIS_URL is set; users with API tokens
(`tokens_create`); the child processes it starts (`Children`, and the service's own web and
worker processes: `Stack`), Ctrl-C and SIGTERM unwinding its cleanup
(`run_until_interrupted`), and what runs beside it (`every`, `raised_open_file_limit`,
`process_tree_cpu_s`, `process_tree_cpu_times`, `PgConnectionSampler`)."""

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import httpx
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


def profile_parts(
    stack: ExitStack, profile: str, *, database: str, bucket_prefix: str
) -> tuple[str | None, dict[str, str], str]:
    """The database and storage of a profile: its DATABASE_URL (None: SQLite, `bench_env`'s
    default), its AWS_* environment and a description of its storage. "embedded" keeps the
    files in local storage; "production" has a PostgreSQL database `database`
    (`postgres_database`) and an S3 bucket (a moto server of its own unless
    AWS_S3_ENDPOINT_URL is set), both removed when `stack` closes."""
    if profile == "embedded":
        return None, {}, "local storage"
    from devtools.servers import s3_endpoint

    database_url = postgres_database(stack, database)
    s3 = stack.enter_context(s3_endpoint(bucket_prefix=bucket_prefix))
    where = f"moto server {s3.endpoint_url}" if s3.server else f"AWS_S3_ENDPOINT_URL {s3.endpoint_url}"
    return database_url, s3.env, f"S3 bucket {s3.bucket} ({where})"


@contextmanager
def var_dir_for(kept: Path | None, *, prefix: str) -> Iterator[Path]:
    """The stack's VAR_DIR: a temporary directory, or `kept` (from --var-dir), which must be
    new or empty and stays, with the database, the logs and the staged files, for a look."""
    if kept is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    var_dir = kept.resolve()
    if var_dir.exists() and any(var_dir.iterdir()):
        raise SystemExit(f"--var-dir {var_dir} is not empty: give a new or empty directory")
    var_dir.mkdir(parents=True, exist_ok=True)
    yield var_dir


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
        from stack.embedded import embedded_redis

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


def broker_purge() -> None:
    """Empties the job queues of the benchmark's broker database (needs `django_setup`).
    Messages left by an interrupted run, or by a worker stopped with jobs still queued, would
    name rows of a database that is gone, or be run by the next worker."""
    from downloads_project.celery import app
    from jobs.queues import QUEUES

    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for queue in QUEUES:
            channel.queue_purge(queue)


def tokens_create(users: int, *, prefix: str) -> list[str]:
    """`users` users named `<prefix>-NNNN`, each with an API key; their keys. No password:
    hashing a hundred would take a minute. Needs `django_setup`."""
    from django.contrib.auth import get_user_model

    from jobs.api_keys import api_key_create

    user_model = get_user_model()
    created = user_model.objects.bulk_create(
        [user_model(username=f"{prefix}-{index:04d}", password="!") for index in range(users)]
    )
    return [api_key_create(user=user, name="bench")[1] for user in created]


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


def child_run(command: list[str], *, env: dict[str, str]) -> int:
    """Runs a measuring subprocess of a benchmark to its end and returns its exit code; an
    interruption (Ctrl-C, SIGTERM) stops it too."""
    child = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()


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


# --- the service's stack: uvicorn and Celery workers, each in a session of its own -------


def process_tree_cpu_times(pid: int) -> tuple[float, float]:
    """CPU seconds in user mode and in the kernel (system) of a process and its live
    descendants, and of the children they have reaped (a prefork pool child that was
    replaced)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    user = system = 0.0
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            user += times.user + times.children_user
            system += times.system + times.children_system
    return user, system


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process tree, as `process_tree_cpu_times`."""
    return sum(process_tree_cpu_times(pid))


# The first line of an exception in a log: `ValueError: ...`, `psycopg_pool.PoolTimeout: ...`.
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Timeout|Exit)\b:?")


class Stack(Children):
    """The service's processes: `web` (uvicorn) and workers (Celery), their logs in
    `log_dir`; stopped with SIGTERM to each leader, then waited for, then killed if they
    linger. Each connects to PostgreSQL as `<application_prefix>-<kind>` (the kind is the
    process's name unless given), so that pg_stat_activity tells their connections apart."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, application_prefix: str) -> None:
        super().__init__(env, log_dir, graceful_s=30)
        self.application_prefix = application_prefix
        self.base_url = ""  # the web processes', once started

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        pipes: bool = False,
        env: dict[str, str] | None = None,
        kind: str | None = None,
    ) -> subprocess.Popen[str]:
        application_name = f"{self.application_prefix}-{kind or name}"
        env = (env or self.env) | {"DATABASE_APPLICATION_NAME": application_name}
        return super().start(name, argv, pipes=pipes, env=env)

    def print_log_problems(self, *, failed: bool) -> None:
        """For each log with a traceback or an ERROR line: its exception lines by kind and
        its last 40 lines; after a failed run, the last 10 lines of the other logs too."""
        for path in sorted(self.log_dir.glob("*.log")):
            name = path.stem
            text = path.read_text(errors="replace") if path.exists() else ""
            if not re.search(r"Traceback|ERROR", text):
                if failed:
                    log(f"\n{name} log ({path}): no traceback or ERROR line; its last 10 lines:")
                    log(log_tail(path, 10))
                continue
            kinds = Counter(line.strip()[:200] for line in text.splitlines() if EXCEPTION_LINE.match(line))
            log(f"\n{name} log ({path}): {text.count('Traceback')} traceback(s); exception lines by kind:")
            for line, count in kinds.most_common(10):
                log(f"  {count:>5} x {line}")
            log(f"--- the last 40 lines of {name}.log ---\n{log_tail(path, 40)}\n---")

    def stop_all(self) -> None:
        # The web processes first (no new jobs), then the workers (a warm shutdown lets their
        # running jobs finish), then the benchmark's ExitStack stops Redis.
        for started, process in list(self.running):
            if started == "web":
                self.stop(process)
        super().stop_all()


def wait_ready(base_url: str, stack: Stack | None, timeout_s: float) -> dict[str, Any]:
    """Until the web process's /ready answers 200 (its database and Redis answer); its body."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if stack is not None:
            stack.check_alive()
        try:
            response = httpx.get(f"{base_url}/ready", timeout=5)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{base_url}/ready did not answer 200 within {timeout_s:.0f} s: {last}")


class PgConnectionSampler:
    """Counts the connections to `database` every `interval_s`, in a thread, from a
    connection of its own that it does not count; by application_name (the stack's
    processes set DATABASE_APPLICATION_NAME). Peak of the total and of each process kind."""

    QUERY = (
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY application_name"
    )

    def __init__(self, database_url: str, database: str, interval_s: float = 0.25) -> None:
        self.database_url = database_url
        self.database = database
        self.interval_s = interval_s
        self.samples = 0
        self.peak = 0
        self.peak_by_name: Counter[str] = Counter()
        self.error: str | None = None
        self.connection: Any = None
        self.running = ExitStack()

    def __enter__(self) -> "PgConnectionSampler":
        import psycopg

        try:
            self.connection = self.running.enter_context(
                psycopg.connect(self.database_url, autocommit=True, application_name="bench-sampler")
            )
        except psycopg.Error as exc:
            self.error = repr(exc)
            return self
        self.running.enter_context(every(self.interval_s, self.sample, name="pg-sampler"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.close()  # the thread stops first, then its connection closes

    def sample(self) -> bool:
        """One count; False (no more) once the connection failed."""
        import psycopg

        try:
            counts: dict[str, int] = dict(self.connection.execute(self.QUERY, (self.database,)).fetchall())
        except psycopg.Error as exc:
            self.error = repr(exc)
            return False
        self.samples += 1
        self.peak = max(self.peak, sum(counts.values()))
        self.peak_by_name |= Counter(counts)  # `|`: the larger count of each name
        return True

    def line(self, bound: int, formula: str) -> str:
        by_name = ", ".join(
            f"{name or '(none)'} {count}" for name, count in sorted(self.peak_by_name.items())
        )
        verdict = "within" if self.peak <= bound else "OVER"
        return (
            f"PostgreSQL connections to {self.database} (sampled every {self.interval_s * 1000:.0f} ms, "
            f"{self.samples} samples{', sampler failed: ' + self.error if self.error else ''}): peak "
            f"{self.peak} ({verdict} the bound {bound} = {formula}); peak by process kind: {by_name or '-'}"
        )

    def figures(self, bound: int, formula: str) -> dict[str, Any]:
        return {
            "pg_connections": {
                "peak": self.peak,
                "peak_by_application_name": dict(self.peak_by_name),
                "bound": bound,
                "bound_formula": formula,
                "samples": self.samples,
                "interval_s": self.interval_s,
                "sampler_error": self.error,
            }
        }
