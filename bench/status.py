"""Status polling benchmark: GET /v1/download/status/<job_id> of the project under wrk, beside a
bare DRF view that reads the same row, the peer celery-progress, and /health of both. Prints
figures and asserts nothing about speed; exits 1 if a project row had an error (a non-2xx/3xx
answer or a socket error), so that it doubles as a smoke check.

    .venv/bin/python -m bench.status                               # 256 connections, 10 s a row
    .venv/bin/python -m bench.status --concurrency 64 --duration 5

The production profile: a throwaway PostgreSQL database (bench/sandbox.py's
postgres_database, on BENCH_POSTGRES_URL's server) and Redis (a private redis-server unless
REDIS_URL is set). Two uvicorn processes, the project (downloads_project.asgi) and the
baselines (bench/status_baselines.py), loaded one row at a time. Everything is removed again at
the end, also after Ctrl-C or SIGTERM. See bench/README.md.
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.report import Column, Table, log, ratio, results_save
from bench.sandbox import (
    Children,
    bench_env,
    django_setup,
    every,
    postgres_database,
    run_until_interrupted,
)
from devtools.servers import free_port, wait_for_port
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

DATABASE = "bench_status"
BASELINES_APPLICATION_NAME = "bench-status-baselines"  # as bench/status_baselines.py connects
BROKER_DB = 7  # no other benchmark uses it; celery-progress's task state is kept there too
WARMUP_S = 2
SAMPLE_EVERY_S = 0.1
QUEUED_AHEAD = 50
PEER_PROGRESS = {"pending": False, "current": 40, "total": 100, "percent": 40.0, "description": ""}
RATIO_GOALS = (  # (name, numerator row, denominator row, least ratio of their requests/s)
    ("status(processing) / bare DRF", "processing", "drf", 1.5),
    ("status(completed) / bare DRF", "completed", "drf", 1.5),
    ("project /health / bare Django /health", "health", "django_health", 0.7),
)
ACCESS_LINE = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})')
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
TIME_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
SELF = [sys.executable, "-m", "bench.status"]  # this script, for its `_setup`


# --- setup (a subprocess with the bench's environment: `status.py _setup`) -------------------


def setup_main() -> None:
    """A user with a key, a processing job with its hot progress in Redis, a completed job
    and a queued one behind QUEUED_AHEAD others; prints the key and the job ids as JSON.
    The key is both the project's API key and the DRF token of the baseline
    (bench/status_baselines.py), which reads DRF's table."""
    django_setup()
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS
    from rest_framework.authtoken.models import Token

    from jobs import hotstate
    from jobs.models import ApiKey, DownloadJob, Status

    user = get_user_model().objects.create_user("bench-status")
    now = timezone.now()
    size = 100 * 2**20
    processing = DownloadJob.objects.create(
        owner=user, file_id=1, status=Status.PROCESSING, attempts=1, started_at=now
    )
    hot = hotstate.HotProgress(attempt=1, bytes_done=size * 2 // 5, bytes_total=size, progress=40)
    hotstate.progress_write(job_id=processing.job_id, progress=hot)
    completed = DownloadJob.objects.create(
        owner=user,
        file_id=2,
        status=Status.COMPLETED,
        attempts=1,
        progress=100,
        bytes_done=size,
        bytes_total=size,
        started_at=now - timedelta(seconds=20),
        completed_at=now,
        duration_seconds=20.0,
        expires_at=now + timedelta(days=1),
        file_name="bench-status.bin",
        file_size_bytes=size,
        content_type="application/octet-stream",
        storage_key="downloads/bench-status.bin",
        sha256="0" * 64,
    )
    # A queued job with QUEUED_AHEAD jobs of another user's in line before it: its status
    # answer counts them (its place in the queue).
    other = get_user_model().objects.create_user("bench-status-other")
    DownloadJob.objects.bulk_create(DownloadJob(owner=other, file_id=3 + n) for n in range(QUEUED_AHEAD))
    queued = DownloadJob.objects.create(owner=user, file_id=3)
    ids = {"processing": processing.job_id, "completed": completed.job_id, "queued": queued.job_id}
    key = Token.objects.create(user=user).key
    # As migration jobs 0009 moves a DRF key: the same key works on both servers.
    ApiKey(user=user, digest=hash_token(key), token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH]).save()
    print(json.dumps({"token": key, "jobs": ids}))


def fixture_create(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [*SELF, "_setup"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,  # its errors go to the terminal
        text=True,
    )
    fixture: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return fixture


def peer_task_store(result_backend: str) -> str:
    """A task id whose state in the result backend is PROGRESS, as celery-progress's
    ProgressRecorder leaves it while a task runs."""
    from celery import Celery

    task_id = str(uuid.uuid4())
    app = Celery("bench-status", backend=result_backend, set_as_current=False)
    app.backend.store_result(task_id, PEER_PROGRESS, "PROGRESS")
    return task_id


# --- servers: one uvicorn process each, in a session of its own ----------------------------


@dataclass
class Server:
    name: str
    url: str
    log_path: Path

    def log_digest(self, lines: int = 40) -> str:
        """The last distinct lines of its output, without the access log's lines, timestamps
        left out and repeats counted."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        seen: Counter[str] = Counter(
            TIMESTAMP.sub("", line) for line in text.splitlines() if not ACCESS_LINE.search(line)
        )
        kept = [f"{line}  (x{count})" if count > 1 else line for line, count in seen.items()]
        return "\n".join(kept[-lines:]) or "(nothing but access lines)"


def server_start(children: Children, name: str, app: str, env: dict[str, str]) -> Server:
    """`python -m uvicorn APP` on a free loopback port, as runstack starts it (access log on),
    stopped with the other children (SIGTERM, SIGKILL after 15 s)."""
    port = free_port()
    # The project's command line (stack/processes.py), with this server's app.
    argv = [app if part == processes.ASGI_APP else part for part in processes.web_argv(port=port)]
    process = children.start(name, argv, env=env)
    server = Server(name, f"http://127.0.0.1:{port}", children.log_path(name))
    try:
        wait_for_port(port, timeout_s=60, process=process)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{name} did not start: {exc}\n{server.log_digest()}") from None
    return server


# --- one row: wrk against one path, with PostgreSQL's connections sampled -------------------


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    server: str  # the uvicorn process that serves it: project or baselines
    path: str
    authenticated: bool = True


@dataclass
class Row:
    target: Target
    rps: float
    p50_ms: float
    p99_ms: float
    bad_answers: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: dict[str, int]  # connect, read, write, timeout
    peak_pg: int
    codes: dict[str, int] = field(default_factory=dict)  # answers by status, from the access log

    @property
    def errors(self) -> int:
        return self.bad_answers + sum(self.socket_errors.values())


@dataclass
class Peak:
    connections: int = 0


@contextmanager
def pg_connections_sampled(database_url: str, server: str) -> Iterator[Peak]:
    """Samples every 100 ms the connections of one server to the database: the baselines' by
    their application_name, the project's as all the others but the sampler's own."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND (application_name = %s) = %s"
    )
    params = (BASELINES_APPLICATION_NAME, server == "baselines")
    peak = Peak()
    with psycopg.connect(database_url, autocommit=True) as sampler:

        def sample() -> None:
            row = sampler.execute(query, params).fetchone()
            peak.connections = max(peak.connections, row[0] if row else 0)

        with every(SAMPLE_EVERY_S, sample, name="pg-sampler"):
            yield peak


def wrk(url: str, token: str | None, args: argparse.Namespace, duration_s: int) -> str:
    argv = [
        "wrk",
        "-t2",
        f"-c{args.concurrency}",
        f"-d{duration_s}s",
        f"--timeout={args.timeout}s",
        "--latency",
    ]
    if token:
        argv += ["-H", f"Authorization: Token {token}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=duration_s + 60)
    return done.stdout


def wrk_latency_ms(output: str, percent: int) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    return float(found[1]) * TIME_MS[found[2]] if found else float("nan")


def wrk_row(target: Target, output: str, peak_pg: int, codes: dict[str, int]) -> Row:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    return Row(
        target=target,
        rps=float(rps[1]) if rps else 0.0,
        p50_ms=wrk_latency_ms(output, 50),
        p99_ms=wrk_latency_ms(output, 99),
        bad_answers=int(bad[1]) if bad else 0,
        socket_errors=dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {},
        peak_pg=peak_pg,
        codes=codes,
    )


def access_log_codes(server: Server, offset: int) -> dict[str, int]:
    """The answers by status code that the server logged past `offset` of its log."""
    with server.log_path.open("rb") as output:
        output.seek(offset)
        text = output.read().decode(errors="replace")
    return dict(sorted(Counter(ACCESS_LINE.findall(text)).items()))


def probe(url: str, token: str | None) -> str:
    """The path's answer before the load: it must be a 200."""
    headers = {"Authorization": f"Token {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    return response.text


def measure(
    server: Server, target: Target, token: str, args: argparse.Namespace, database_url: str | None
) -> Row:
    url = server.url + target.path
    key = token if target.authenticated else None
    try:
        answer = probe(url, key)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.name} log:\n{server.log_digest()}") from None
    log(f"{target.label}: GET {target.path} -> 200 {answer[:120]}")
    wrk(url, key, args, WARMUP_S)
    offset = server.log_path.stat().st_size
    with ExitStack() as sampling:
        # SQLite (the embedded profile) has no connections to count: the column stays 0.
        peak = (
            Peak()
            if database_url is None
            else sampling.enter_context(pg_connections_sampled(database_url, server.name))
        )
        output = wrk(url, key, args, args.duration)
    row = wrk_row(target, output, peak.connections, access_log_codes(server, offset))
    log(f"  {row.rps:.0f} requests/s, p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms, {row.errors} errors")
    return row


# --- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    value: float
    bound: str
    met: bool


def goals(rows: dict[str, Row], pool_max_size: int) -> list[Goal]:
    found = []
    for name, numerator, denominator, least in RATIO_GOALS:
        value = ratio(rows[numerator].rps, rows[denominator].rps)
        found.append(Goal(name, round(value, 2), f">= {least:g}", value >= least))
    project = [row for row in rows.values() if row.target.server == "project"]
    errors = sum(row.errors for row in project)
    peak = max(row.peak_pg for row in project)
    found.append(Goal("errors, project rows", errors, "= 0", errors == 0))
    found.append(
        Goal("peak PG connections, project rows", peak, f"<= {pool_max_size}", peak <= pool_max_size)
    )
    return found


def table_print(rows: list[Row]) -> None:
    table = Table(
        Column("path", max(len(row.target.label) for row in rows), align="<"),
        Column("rps", 8, ".0f"),
        Column("p50 ms", 8, ".1f"),
        Column("p99 ms", 8, ".1f"),
        Column("errors", 7),
        Column("peak PG", 8),
    )
    log()
    table.print_header()
    for row in rows:
        table.print_row(row.target.label, row.rps, row.p50_ms, row.p99_ms, row.errors, row.peak_pg)


def goals_print(found: list[Goal], rows: dict[str, Row]) -> None:
    log("\nrequests/s ratios of this run, and the goals:")
    for goal in found:
        log(f"  {goal.name:<38} {goal.value:>7g}  goal {goal.bound:<6} {'pass' if goal.met else 'MISS'}")
    peer = ratio(rows["processing"].rps, rows["peer"].rps)
    log(f"  {'status(processing) / celery-progress':<38} {peer:>7.2f}  (no goal)")
    log(
        "  PG connections: every connection to the database but the baselines' and the sampler's, "
        "against --pool-max-size, the bound of the one pool of the project's one uvicorn process"
    )


def errors_print(rows: list[Row], servers: dict[str, Server], args: argparse.Namespace) -> None:
    for row in rows:
        if row.errors:
            log(
                f"\n{row.target.label}: {row.bad_answers} non-2xx/3xx, socket errors {row.socket_errors} "
                f"(timeout: no answer within {args.timeout} s); answers logged by status {row.codes}"
            )
    kept = "" if args.var_dir else ", removed at exit unless --var-dir is given"
    for name in sorted({row.target.server for row in rows if row.errors}):
        log(f"\n{name} log (access lines left out; all of it in {servers[name].log_path}{kept}):")
        log(servers[name].log_digest())


def report(ordered: list[Row], servers: dict[str, Server], args: argparse.Namespace) -> int:
    rows = {row.target.key: row for row in ordered}
    table_print(ordered)
    found = goals(rows, args.pool_max_size)
    goals_print(found, rows)
    errors_print(ordered, servers, args)
    project_errors = sum(row.errors for row in ordered if row.target.server == "project")
    log(
        f"\nRESULT: {'OK' if not project_errors else 'FAILED'}: {project_errors} error(s) on the project rows"
        + (" (exit status 1)" if project_errors else "")
    )
    if args.save:
        rows_found, goals_found = [asdict(row) for row in ordered], [asdict(goal) for goal in found]
        summary = {"options": vars(args), "rows": rows_found, "goals": goals_found}
        results_save("status", summary)
    return 1 if project_errors else 0


# --- the run --------------------------------------------------------------------------------

APPS = {"project": "downloads_project.asgi:application", "baselines": "bench.status_baselines:application"}
# The rows, as the table shows them: key, label, server, path ({processing}, {completed} and {queued}
# are the jobs' ids, {task} the peer's task id), whether it sends the token.
ROWS = (
    ("processing", "project status, processing job", "project", "/v1/download/status/{processing}", True),
    ("completed", "project status, completed job", "project", "/v1/download/status/{completed}", True),
    ("queued", "project status, queued job", "project", "/v1/download/status/{queued}", True),
    ("list", "project list, first page (the page's poll)", "project", "/v1/downloads", True),
    ("drf", "bare DRF + token auth, 1 SQL read (baseline)", "baselines", "/status/{processing}", True),
    ("peer", "celery-progress get_progress (peer)", "baselines", "/celery-progress/{task}/", False),
    ("health", "project /health", "project", "/health", False),
    ("django_health", "bare Django /health (baseline)", "baselines", "/health", False),
)


def targets(jobs: dict[str, str], task_id: str) -> list[Target]:
    return [
        Target(key, label, server, path.format(task=task_id, **jobs), authenticated)
        for key, label, server, path, authenticated in ROWS
    ]


def run(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        var_dir = args.var_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-status-"))
        )
        var_dir.mkdir(parents=True, exist_ok=True)
        database_url = postgres_database(stack, args.database) if args.profile == "production" else None
        env = bench_env(stack, var_dir, broker_db=BROKER_DB, database_url=database_url)
        env["DATABASE_POOL_MAX_SIZE"] = str(args.pool_max_size)
        fixture = fixture_create(env)
        result_backend = env["CELERY_BROKER_URL"]  # the bench's own database; no message goes there
        baselines_env = {
            "DJANGO_SETTINGS_MODULE": "bench.status_baselines",
            "CELERY_RESULT_BACKEND": result_backend,
        }
        envs = {"project": env, "baselines": env | baselines_env}
        all_targets = targets(fixture["jobs"], peer_task_store(result_backend))
        log(
            f"status: {f'PostgreSQL database {args.database}' if database_url else 'SQLite'}, "
            f"Redis {env['REDIS_URL']}, "
            f"pool max size {args.pool_max_size}; "
            f"per row {WARMUP_S} s of warm-up, then wrk -t2 -c{args.concurrency} -d{args.duration}s "
            f"--timeout={args.timeout}s --latency; {os.cpu_count()} CPUs, {platform.platform()}"
        )
        # Both at once, loaded one row at a time: the rows follow each other closely on a noisy box.
        children = Children(env, var_dir, graceful_s=15)
        stack.callback(children.stop_all)
        servers = {name: server_start(children, name, app, envs[name]) for name, app in APPS.items()}
        rows = [
            measure(servers[target.server], target, fixture["token"], args, database_url)
            for target in all_targets
        ]
        return report(rows, servers, args)


def main(argv: list[str]) -> None:
    if argv[:1] == ["_setup"]:
        setup_main()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=256, help="wrk connections (default 256)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row (default 10)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=30,
        help="wrk's --timeout, seconds: a slower answer counts as a timeout error and is left out of "
        "the percentiles (default 30, as bench/load.py; wrk's own is 2)",
    )
    parser.add_argument(
        "--pool-max-size",
        type=int,
        default=10,
        help="DATABASE_POOL_MAX_SIZE of the project, and of the baselines (default 10)",
    )
    parser.add_argument(
        "--profile",
        choices=("production", "embedded"),
        default="production",
        help="production: a throwaway PostgreSQL database (default); embedded: SQLite in VAR_DIR",
    )
    parser.add_argument(
        "--database",
        default=DATABASE,
        help=f"the throwaway PostgreSQL database's name (default {DATABASE}); dropped first and at the end",
    )
    parser.add_argument(
        "--var-dir", type=Path, help="keep VAR_DIR (the uvicorn logs) here; default: a temporary one"
    )
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/status-*.json"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 2 or args.duration < 1 or args.timeout < 1 or args.pool_max_size < 2:
        parser.error(
            "--concurrency must be at least 2 (wrk's 2 threads), --duration and --timeout 1, "
            "--pool-max-size 2 (the pool's min size)"
        )
    if shutil.which("wrk") is None:
        sys.exit("status: wrk is missing; install it: apt-get install wrk")
    if importlib.util.find_spec("celery_progress") is None:
        sys.exit(
            "status: celery-progress is missing; install it: .venv/bin/pip install -r bench/requirements.txt"
        )
    run_until_interrupted(lambda: run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
