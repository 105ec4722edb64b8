"""Writes of a job's row per job: how often one job writes its row in the database, for a
small slow file and a large one, run by a real Celery worker. Prints figures; asserts
nothing.

    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.writes
    .venv/bin/python -m bench.writes --profile production      # PostgreSQL + Redis + S3 (moto)
    .venv/bin/python -m bench.writes --jobs 40:2,1024:16       # size MiB : origin rate MiB/s

Each job is created through `jobs.services.download_job_create`, like an initiate, and run
by a fresh prefork worker (`-c 1`) whose synthetic origin serves the file at the given rate,
so that a job also lasts long enough for its heartbeats to count. Two counts per job:

- `version`: the row's own counter, which the insert sets to 1 and every write raises by
  one (both profiles);
- on PostgreSQL, the table's `n_tup_ins + n_tup_upd` in `pg_stat_user_tables` before and
  after the job, read once the worker and this process have closed their connections (a
  backend flushes its counters when it exits): every row written while only this job runs,
  whatever wrote it.

The production profile needs REDIS_URL (a Redis of the machine) and creates a throwaway
PostgreSQL database on BENCH_POSTGRES_URL's server (see bench/sandbox.py). See bench/README.md.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.report import Column, Table, log, results_save
from bench.sandbox import (
    Children,
    bench_env,
    child_run,
    django_setup,
    postgres_database,
    run_until_interrupted,
)
from devtools.servers import s3_endpoint
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
BROKER_DB = 8  # a Redis database of the benchmark's own, so no other worker takes its jobs
FILE_ID = 515151
SELF = [sys.executable, "-m", "bench.writes"]


def table_writes(database_url: str) -> int | None:
    """Rows inserted plus rows updated in the jobs table since the server's statistics were
    reset (PostgreSQL only)."""
    if not database_url.startswith("postgres"):
        return None
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'jobs_downloadjob'"
        ).fetchone()
    return int(row[0]) if row else 0


def job_run(children: Children, owner: Any, size: int, rate_bps: int, number: int) -> dict[str, Any]:
    """One job of `size` bytes at `rate_bps`, on a fresh worker; its writes."""
    from django.db import connection

    from jobs.models import TERMINAL_STATUSES, DownloadJob, Status
    from jobs.services import download_job_create
    from jobs.transfer.storage import stored_file_delete

    name = f"worker-{number}"
    # A prefork worker, as the module says, chosen by the setting: Celery takes `--pool prefork`
    # for its default and lets a configured pool (WORKER_POOL) win over it.
    env = {
        **os.environ,
        "SYNTHETIC_FILE_BYTES": str(size),
        "SYNTHETIC_RATE_BPS": str(rate_bps),
        "WORKER_POOL": "prefork",
    }
    argv = processes.worker_argv(
        concurrency=1,
        name=f"bench-writes-{number}@%h",
        extra=("--without-gossip", "--without-mingle", "--without-heartbeat"),
    )
    worker = children.start(name, argv, env=env)
    children.wait_worker_ready(name, timeout_s=60)
    database_url = os.environ["DATABASE_URL"]
    connection.close()
    time.sleep(0.5)
    before = table_writes(database_url)
    job, _ = download_job_create(owner=owner, file_id=FILE_ID + number)
    deadline = time.monotonic() + 3600
    while job.status not in TERMINAL_STATUSES:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker stopped or timed out:\n{children.log_tail(name)}")
        time.sleep(0.2)
        job.refresh_from_db(fields=["status"])
    job.refresh_from_db()
    if job.status != Status.COMPLETED or job.file_size_bytes != size:
        raise RuntimeError(f"{job.job_id} ended {job.status} {job.error_code} {job.error_message}")
    children.stop(worker)  # its backend exits and flushes its counters
    connection.close()
    time.sleep(1.0)
    after = table_writes(database_url)
    stored_file_delete(job.storage_key)
    version = DownloadJob.objects.values_list("version", flat=True).get(pk=job.pk)
    result = {
        "size": size,
        "rate_bps": rate_bps,
        "seconds": job.duration_seconds or 0.0,
        "version": version,
        "table_writes": None if before is None or after is None else after - before,
    }
    log(
        f"  {size // MIB} MiB at {rate_bps / MIB:g} MiB/s: {result['seconds']:.1f} s, "
        f"row version {version}, table writes {result['table_writes']}"
    )
    return result


def jobs_main(jobs: list[tuple[int, int]], out: Path, log_dir: Path) -> None:
    django_setup()
    from django.contrib.auth.models import User

    owner, _ = User.objects.get_or_create(username="bench-writes")
    children = Children(dict(os.environ), log_dir, graceful_s=15, whole_group=True)
    results = []
    try:
        for number, (size, rate_bps) in enumerate(jobs, start=1):
            results.append(job_run(children, owner, size, rate_bps, number))
    finally:
        children.stop_all()
    out.write_text(json.dumps(results))


def driver_main(args: argparse.Namespace) -> int:
    jobs = [
        (int(size) * MIB, int(float(rate) * MIB))
        for size, rate in (j.split(":") for j in args.jobs.split(","))
    ]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-writes-")))
        production = args.profile == "production"
        if production and not os.environ.get("REDIS_URL"):
            raise SystemExit("--profile production needs REDIS_URL (a Redis of the machine)")
        database_url = postgres_database(stack, f"bench_writes_{os.getpid()}") if production else None
        env = bench_env(stack, tmp / "var", broker_db=BROKER_DB, database_url=database_url)
        env.update({"ORIGIN": "synthetic", "JOB_SOFT_TIME_LIMIT_S": "3600", "JOB_MAX_ATTEMPTS": "1"})
        if production:
            env.update(stack.enter_context(s3_endpoint(bucket_prefix="downloads-bench-writes")).env)
        storage = "S3 (moto)" if production else "local storage"
        database = "PostgreSQL" if production else "SQLite"
        log(f"writes per job: {database}, {storage}; one fresh worker (prefork, -c 1) per job")
        (tmp / "logs").mkdir()
        out = tmp / "writes.json"
        command = [
            *SELF,
            "_jobs",
            "--jobs",
            json.dumps(jobs),
            "--out",
            str(out),
            "--log-dir",
            str(tmp / "logs"),
        ]
        code = child_run(command, env=env)
        if code:
            return code
        results = json.loads(out.read_text())
    table = Table(
        Column("file", 8),
        Column("origin\nMiB/s", 7, "g"),
        Column("job s", 7, ".1f"),
        Column("row writes\n(version)", 11),
        Column("table writes\n(pg_stat)", 13),
    )
    log()
    table.print_header()
    for result in results:
        table.print_row(
            f"{result['size'] // MIB} MiB",
            result["rate_bps"] / MIB,
            result["seconds"],
            result["version"],
            "-" if result["table_writes"] is None else result["table_writes"],
        )
    if args.save:
        results_save("writes", {"profile": args.profile, "jobs": results})
    return 0


def run(argv: list[str]) -> int:
    if argv and argv[0] == "_jobs":
        parser = argparse.ArgumentParser(prog="writes.py _jobs")
        parser.add_argument("--jobs", required=True)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--log-dir", type=Path, required=True)
        sub = parser.parse_args(argv[1:])
        jobs_main([tuple(job) for job in json.loads(sub.jobs)], sub.out, sub.log_dir)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=("embedded", "production"), default="embedded")
    parser.add_argument(
        "--jobs",
        default="40:2,1024:16",
        help="size MiB : origin rate MiB/s, comma-separated (default 40:2,1024:16)",
    )
    parser.add_argument("--no-save", dest="save", action="store_false", help="do not write bench/results/")
    return driver_main(parser.parse_args(argv))


if __name__ == "__main__":
    run_until_interrupted(lambda: run(sys.argv[1:]))
