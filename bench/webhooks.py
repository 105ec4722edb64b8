"""Webhooks: what signed, retried callbacks cost. Prints figures, each beside a baseline
measured in the same run; asserts nothing.

    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.webhooks
    .venv/bin/python -m bench.webhooks --deliveries 500 --completions 300 --latency-jobs 40

Three measurements, on the embedded default (SQLite, the embedded Redis as broker):

- **Deliveries per second** to a local receiver (a thread server on loopback that answers
  200), each a full attempt (`webhooks.services.webhook_delivery_attempt`: the claim, the
  signature, the address check, the POST, the result's write), in one thread and in four;
  the baseline is bare `httpx` POSTs of the same body to the same receiver.
- **Added cost per job completion**: the completion write (`download_job_complete`) of
  processing jobs whose owner has no endpoint (the baseline), one endpoint subscribed to
  `job.completed` (a delivery row in the same transaction, its message sent on commit), or
  one endpoint subscribed to other events only.
- **Job latency with a receiver that hangs**: jobs run end to end by a real Celery worker
  (thread pool, as deployed), from creation to completion, for an owner without endpoints
  (the baseline), for one whose endpoint answers at once (what the outbox itself adds), and
  for one whose endpoint hangs (`--hang-s`, 10 s) before it answers: its deliveries hold
  worker threads while the jobs run beside them.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.report import Column, Table, log, percentile, ratio
from bench.sandbox import Children, bench_env, broker_purge, child_run, django_setup, run_until_interrupted
from devtools.servers import free_port
from stack import processes

BROKER_DB = 11  # a Redis database of the benchmark's own, so no other worker takes its jobs
SELF = [sys.executable, "-m", "bench.webhooks"]


class _Handler(BaseHTTPRequestHandler):
    server: "Receiver"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.hang_s:
            time.sleep(self.server.hang_s)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Receiver(ThreadingHTTPServer):
    """A receiver on loopback: answers 200, after `hang_s` if given."""

    daemon_threads = True

    def __init__(self, port: int, *, hang_s: float = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.hang_s = hang_s
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def rate(count: int, action: Callable[[int], object], *, threads: int) -> float:
    """`count` calls of `action(i)` on `threads` threads; calls per second."""
    started = time.perf_counter()
    if threads == 1:
        for index in range(count):
            action(index)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(action, range(count)))
    return count / (time.perf_counter() - started)


def user(name: str) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user(name, password=None)


@contextmanager
def closing_connections() -> Iterator[None]:
    """Each pool thread's database connection is closed when its work is done."""
    from django.db import connections

    try:
        yield
    finally:
        connections.close_all()


def deliveries_per_second(receiver: Receiver, count: int) -> None:
    import httpx
    from django.db import connection

    from jobs.models import DownloadJob, Status
    from webhooks import services
    from webhooks.models import WebhookDelivery

    owner = user("bench-deliveries")
    services.webhook_endpoint_create(owner=owner, url=receiver.url, events=["job.cancelled"])

    def record(_: int) -> list[int]:
        jobs = DownloadJob.objects.bulk_create(
            DownloadJob(owner=owner, file_id=70000, status=Status.CANCELLED) for _ in range(count)
        )
        for job in DownloadJob.objects.filter(owner=owner).order_by("pk")[: len(jobs)]:
            services.webhook_deliveries_record(job=job, event="job.cancelled")
        broker_purge()  # their first sends: this process makes the attempts itself
        pks = list(WebhookDelivery.objects.filter(status="pending").values_list("pk", flat=True))
        DownloadJob.objects.filter(owner=owner).delete()
        return pks

    body = WebhookDelivery.objects.none().model(body="{}").body
    table = Table(
        Column("path", 34, align="<"),
        Column("threads", 8),
        Column("per s", 10, ".0f"),
        Column("ratio", 8, ".2f"),
    )
    log(f"\nDeliveries per second to a local receiver ({count} each)")
    table.print_header()
    with httpx.Client() as client:
        baseline = rate(count, lambda _: client.post(receiver.url, content=body), threads=1)
    table.print_row("bare httpx POST (baseline)", 1, baseline, 1.0)
    for threads in (1, 4):
        pks = record(0)
        connection.close()

        def attempt(index: int, pks: list[int] = pks) -> None:
            with closing_connections():
                outcome = services.webhook_delivery_attempt(delivery_pk=pks[index])
            assert outcome == "delivered", outcome

        per_s = rate(len(pks), attempt, threads=threads)
        table.print_row("webhook delivery attempt", threads, per_s, ratio(per_s, baseline))


def completion_cost(receiver: Receiver, count: int) -> None:
    from django.utils import timezone

    from jobs.models import DownloadJob, Status
    from jobs.services.attempt_end import download_job_complete
    from jobs.transfer.staging import StagedFile
    from webhooks import services

    def times_ms(owner: Any) -> list[float]:
        now = timezone.now()
        DownloadJob.objects.bulk_create(
            DownloadJob(owner=owner, file_id=70000, status=Status.PROCESSING, attempts=1, started_at=now)
            for _ in range(count)
        )
        found = []
        for job in DownloadJob.objects.filter(owner=owner, status=Status.PROCESSING):
            staged = StagedFile(
                key=f"bench/{job.job_id}",
                file_name="f.pdf",
                content_type="application/pdf",
                size=1,
                sha256="0" * 64,
            )
            started = time.perf_counter()
            download_job_complete(job=job, attempt=1, staged=staged)
            found.append((time.perf_counter() - started) * 1000)
        broker_purge()
        return sorted(found)

    none = user("bench-none")
    subscribed = user("bench-subscribed")
    services.webhook_endpoint_create(owner=subscribed, url=receiver.url, events=["job.completed"])
    other_events = user("bench-other-events")
    services.webhook_endpoint_create(owner=other_events, url=receiver.url, events=["job.failed"])
    log(f"\nCost of a job's completion write ({count} jobs each, ms)")
    table = Table(
        Column("owner", 34, align="<"),
        Column("median", 8, ".2f"),
        Column("p95", 8, ".2f"),
        Column("mean", 8, ".2f"),
        Column("ratio", 8, ".2f"),
    )
    table.print_header()
    times_ms(user("bench-warmup"))
    baseline = 0.0
    for name, owner in (
        ("no endpoint (baseline)", none),
        ("1 endpoint, subscribed", subscribed),
        ("1 endpoint, other events", other_events),
    ):
        found = times_ms(owner)
        median = statistics.median(found)
        baseline = baseline or median
        table.print_row(name, median, percentile(found, 95), statistics.fmean(found), ratio(median, baseline))


def job_latency(
    receiver: Receiver, receiver_hanging: Receiver, count: int, env: dict[str, str], log_dir: Path
) -> None:
    from jobs.models import DownloadJob, Status
    from jobs.services import download_job_create
    from webhooks import services

    children = Children(env, log_dir)
    children.start("worker", processes.worker_argv(name="bench-webhooks@%h"))
    try:
        children.wait_worker_ready("worker", timeout_s=60)

        def latencies_s(owner: Any) -> list[float]:
            jobs = [download_job_create(owner=owner, file_id=71000 + index)[0] for index in range(count)]
            deadline = time.monotonic() + 120
            rows = DownloadJob.objects.filter(pk__in=[job.pk for job in jobs])
            while rows.exclude(status=Status.COMPLETED).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("jobs did not complete within 120 s")
                children.check_alive()
                time.sleep(0.05)
            return sorted(
                (job.completed_at - job.created_at).total_seconds()
                for job in rows
                if job.completed_at is not None
            )

        none = user("bench-latency-none")
        answering = user("bench-latency-answering")
        services.webhook_endpoint_create(owner=answering, url=receiver.url, events=["job.completed"])
        hanging = user("bench-latency-hanging")
        services.webhook_endpoint_create(owner=hanging, url=receiver_hanging.url, events=["job.completed"])
        latencies_s(user("bench-latency-warmup"))
        hang_s = receiver_hanging.hang_s
        log(f"\nJob latency, creation to completion ({count} jobs at once, s; receiver hangs {hang_s:.0f} s)")
        table = Table(
            Column("owner", 34, align="<"),
            Column("median", 8, ".3f"),
            Column("p95", 8, ".3f"),
            Column("ratio", 8, ".2f"),
        )
        table.print_header()
        baseline = latencies_s(none)
        table.print_row("no endpoint (baseline)", statistics.median(baseline), percentile(baseline, 95), 1.0)
        for name, owner in (("endpoint that answers at once", answering), ("endpoint that hangs", hanging)):
            found = latencies_s(owner)
            median = statistics.median(found)
            table.print_row(name, median, percentile(found, 95), ratio(median, statistics.median(baseline)))
    finally:
        children.stop_all()


def child(args: argparse.Namespace, env: dict[str, str]) -> int:
    django_setup()
    receiver = Receiver(args.receiver_port)
    hanging = Receiver(args.hanging_port, hang_s=args.hang_s)
    deliveries_per_second(receiver, args.deliveries)
    completion_cost(receiver, args.completions)
    job_latency(receiver, hanging, args.latency_jobs, env, Path(args.log_dir))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--completions", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument(
        "--hang-s", type=float, default=10.0, help="how long the hanging receiver holds each POST"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--receiver-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hanging-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import os

        return child(args, dict(os.environ))
    with ExitStack() as stack:
        var_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhooks-")))
        receiver_port, hanging_port = free_port(), free_port()
        env = bench_env(stack, var_dir, broker_db=BROKER_DB) | {
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver_port},127.0.0.1:{hanging_port}",
            "WEBHOOK_TIMEOUT_S": str(args.hang_s + 5),  # the hanging receiver answers, late
            "WEBHOOK_CLAIM_S": str(args.hang_s * 3 + 30),
            "ORIGIN": "synthetic",
            "SYNTHETIC_FILE_BYTES": str(64 * 1024),
            "SYNTHETIC_RATE_BPS": "0",
            "JOB_REUSE": "off",
            "JOB_MAX_ACTIVE_PER_USER": "100000",
        }
        log(f"bench.webhooks: SQLite and local storage in {var_dir}; receiver on 127.0.0.1:{receiver_port}")
        return child_run(
            [
                *SELF,
                "--child",
                f"--deliveries={args.deliveries}",
                f"--completions={args.completions}",
                f"--latency-jobs={args.latency_jobs}",
                f"--hang-s={args.hang_s}",
                f"--receiver-port={receiver_port}",
                f"--hanging-port={hanging_port}",
                f"--log-dir={var_dir}",
            ],
            env=env,
        )


if __name__ == "__main__":
    run_until_interrupted(main)
