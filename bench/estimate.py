"""What initiate's `estimated_time` costs to compute, against the ways it could be read from
the job table, as the backlog and the completed rows grow. Prints figures; asserts nothing.

    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.estimate   # SQLite
    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.estimate --profile production
    .venv/bin/python -m bench.estimate --sizes 1000,10000 --calls 100

The table first holds `--history` expired jobs (200,000: what 90 days of audit retention
keep of a few thousand jobs a day). For each size N it also holds N queued jobs (the
backlog, over the three priorities) and N jobs completed within the last 24 hours, one
every 86400 / N s; the broker's three lists hold N messages and hot-state Redis the
completions of the last window. Then each
read runs `--calls` times in a row, timed one by one (median and p99, milliseconds):

- `estimate (Redis)`: `jobs.selectors.download_job_estimate_s` for a new normal job, as
  initiate calls it: the recent completions (one pipeline to hot-state Redis) and the
  queue depths (one pipeline to the broker);
- `rows: mean of last 100` : the query the estimate used before it (the mean duration of
  the last 100 jobs completed within 24 h);
- `rows: completed in window`: the completion rate and mean duration from the rows
  (count and mean of the jobs completed within JOB_ESTIMATE_WINDOW_S);
- `rows: queued ahead`: the place from the rows (queued jobs of the same or a higher
  priority created before the new one).

On PostgreSQL the plan of each row query is printed too (the scans of EXPLAIN): which index,
if any, serves it. The production profile creates a throwaway PostgreSQL database on
BENCH_POSTGRES_URL's server (bench/sandbox.py). See bench/README.md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.report import Column, Table, log, percentile, results_save
from bench.sandbox import (
    bench_env,
    child_run,
    django_setup,
    postgres_database,
    run_until_interrupted,
)

ROOT = Path(__file__).resolve().parent.parent

BROKER_DB = 6  # a Redis database of the benchmark's own
SELF = [sys.executable, "-m", "bench.estimate"]
READS = ("estimate (Redis)", "rows: mean of last 100", "rows: completed in window", "rows: queued ahead")


def timed(read: Callable[[], object], calls: int) -> dict[str, float]:
    read()  # warm: connections, statement caches
    spent_ms = []
    for _ in range(calls):
        started = time.perf_counter()
        read()
        spent_ms.append((time.perf_counter() - started) * 1000)
    spent_ms.sort()
    return {"p50_ms": statistics.median(spent_ms), "p99_ms": percentile(spent_ms, 99)}


def rows_add(owner: Any, count: int, *, offset: int) -> None:
    """`count` queued jobs and `count` jobs completed within 24 h, and their messages and
    recent completions in Redis."""
    from datetime import timedelta

    from django.utils import timezone

    from infra.redis import broker_client
    from jobs import completions
    from jobs.models import DownloadJob, Status
    from jobs.ops.broker import PRIORITIES
    from jobs.queues import queue_name

    now = timezone.now()
    queued, completed = [], []
    for n in range(count):
        queued.append(
            DownloadJob(owner=owner, file_id=offset + n + 1, priority=PRIORITIES[n % 3], max_attempts=3)
        )
        completed_at = now - timedelta(seconds=n * 86400 / count)
        completed.append(
            DownloadJob(
                owner=owner,
                file_id=offset + n + 1,
                status=Status.COMPLETED,
                completed_at=completed_at,
                duration_seconds=5.0 + n % 50,
            )
        )
    DownloadJob.objects.bulk_create(queued, batch_size=5000)
    DownloadJob.objects.bulk_create(completed, batch_size=5000)
    pipe = broker_client().pipeline(transaction=False)
    for n in range(count):
        pipe.lpush(queue_name(PRIORITIES[n % 3]), n)  # LLEN does not read the messages
    pipe.execute()
    for job in completed:
        if job.completed_at and (now - job.completed_at).total_seconds() < 3600:
            completions.completion_record(job)


def history_add(owner: Any, count: int) -> None:
    """`count` expired jobs of the last 90 days: the rows an audit retention keeps."""
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import DownloadJob, Status

    now = timezone.now()
    rows = [
        DownloadJob(
            owner=owner,
            file_id=n + 1,
            status=Status.EXPIRED,
            completed_at=now - timedelta(days=1 + n * 89 / count),
            duration_seconds=5.0 + n % 50,
        )
        for n in range(count)
    ]
    DownloadJob.objects.bulk_create(rows, batch_size=5000)


def measure_main(sizes: list[int], calls: int, history: int, out: Path) -> None:
    django_setup()
    from datetime import timedelta

    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection
    from django.db.models import Avg, Count
    from django.db.models.query import QuerySet
    from django.utils import timezone

    from jobs.models import DownloadJob, Status
    from jobs.selectors import download_job_estimate_s

    owner = User.objects.create_user("bench-estimate")
    history_add(owner, history)
    new_job = DownloadJob.objects.create(owner=owner, file_id=1, priority="normal")
    postgres = connection.vendor == "postgresql"

    def mean_of_last_100() -> QuerySet[Any, Any]:
        since = timezone.now() - timedelta(hours=24)
        return (
            DownloadJob.objects.filter(status=Status.COMPLETED, completed_at__gte=since)
            .order_by("-completed_at")
            .values_list("duration_seconds", flat=True)[:100]
        )

    def completed_in_window() -> QuerySet[Any, Any]:
        since = timezone.now() - timedelta(seconds=settings.JOB_ESTIMATE_WINDOW_S)
        return DownloadJob.objects.filter(status=Status.COMPLETED, completed_at__gte=since)

    def queued_ahead() -> QuerySet[Any, Any]:
        return DownloadJob.objects.filter(
            status=Status.QUEUED, priority__in=("high", "normal"), created_at__lt=new_job.created_at
        )

    reads: dict[str, Callable[[], object]] = {
        READS[0]: lambda: download_job_estimate_s(job=new_job),
        READS[1]: lambda: list(mean_of_last_100()),
        READS[2]: lambda: completed_in_window().aggregate(n=Count("pk"), mean_s=Avg("duration_seconds")),
        READS[3]: lambda: queued_ahead().count(),
    }
    plans = {READS[1]: mean_of_last_100, READS[2]: completed_in_window, READS[3]: queued_ahead}
    results: list[dict[str, Any]] = []
    done = 0
    for size in sizes:
        # The new job is last in its queue: the backlog goes in before it.
        rows_add(owner, size - done, offset=done)
        DownloadJob.objects.filter(pk=new_job.pk).update(created_at=timezone.now())
        new_job.refresh_from_db()
        done = size
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE jobs_downloadjob")
        for name, read in reads.items():
            figures: dict[str, Any] = {"size": size, "read": name, **timed(read, calls)}
            if postgres and name in plans:
                scans = [line for line in plans[name]().explain().splitlines() if "Scan" in line]
                figures["plan"] = "; ".join(line.strip(" ->").split("  (")[0] for line in scans)
            if name == READS[0]:
                figures["value"] = download_job_estimate_s(job=new_job)
            results.append(figures)
            log(f"  {size:>7} {name}: {figures['p50_ms']:.2f} ms")
    out.write_text(json.dumps(results))


def driver_main(args: argparse.Namespace) -> int:
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-estimate-")))
        production = args.profile == "production"
        database_url = postgres_database(stack, f"bench_estimate_{os.getpid()}") if production else None
        env = bench_env(stack, tmp / "var", broker_db=BROKER_DB, database_url=database_url)
        database = "PostgreSQL" if production else "SQLite"
        log(f"estimated_time: {database}, {args.history} expired rows, {args.calls} calls per read")
        out = tmp / "estimate.json"
        command = [*SELF, "_measure", "--sizes", ",".join(map(str, sizes)), "--calls", str(args.calls)]
        command += ["--history", str(args.history)]
        code = child_run([*command, "--out", str(out)], env=env)
        if code:
            return code
        results = json.loads(out.read_text())
    table = Table(
        Column("N", 8),
        Column("read", 27, align="<", before="  "),
        Column("p50 ms", 8, ".2f"),
        Column("p99 ms", 8, ".2f"),
    )
    log()
    table.print_header()
    for result in results:
        table.print_row(result["size"], result["read"], result["p50_ms"], result["p99_ms"])
    plans = [result for result in results if "plan" in result]
    if plans:
        log("\nplans (PostgreSQL: the scans of EXPLAIN):")
        for result in plans:
            log(f"  {result['size']:>7} {result['read']}: {result['plan']}")
    log("\nthe estimate for a new normal job, seconds (2N/3 ahead, N completions a day):")
    for result in results:
        if "value" in result:
            log(f"  {result['size']:>7}: {result['value']}")
    if args.save:
        results_save("estimate", {"profile": args.profile, "calls": args.calls, "results": results})
    return 0


def run(argv: list[str]) -> int:
    if argv and argv[0] == "_measure":
        parser = argparse.ArgumentParser()
        parser.add_argument("--sizes", required=True)
        parser.add_argument("--calls", type=int, required=True)
        parser.add_argument("--history", type=int, required=True)
        parser.add_argument("--out", type=Path, required=True)
        child_args = parser.parse_args(argv[1:])
        sizes = [int(size) for size in child_args.sizes.split(",")]
        measure_main(sizes, child_args.calls, child_args.history, child_args.out)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=("embedded", "production"), default="embedded")
    parser.add_argument("--sizes", default="1000,10000,100000", help="queued and completed rows, each")
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each read per size")
    parser.add_argument("--history", type=int, default=200_000, help="expired rows beside them")
    parser.add_argument("--no-save", dest="save", action="store_false")
    return driver_main(parser.parse_args(argv))


if __name__ == "__main__":
    run_until_interrupted(lambda: run(sys.argv[1:]))
