"""Capacity benchmark: how many slow downloads one worker process holds in flight. N jobs of
a size at a rate go through a real web process and ONE real worker process, on both
profiles, with the worker's thread pool and prefork side by side. Prints figures; exits 1
when a job did not complete exactly once, so that it doubles as a smoke check.

    .venv/bin/python -m bench.capacity                          # 200 jobs of 8 MiB at 1 MiB/s
    .venv/bin/python -m bench.capacity --jobs 20 --file-mib 2   # a short run (~1 min a profile)
    .venv/bin/python -m bench.capacity --profile production --pools threads --concurrency 400 --jobs 400

For each profile it sets up a stack and removes it again, also after Ctrl-C: a VAR_DIR, the
database (embedded: SQLite in the VAR_DIR; production: a throwaway PostgreSQL database on
BENCH_POSTGRES_URL's server), Redis (a private one unless REDIS_URL is set), the storage
(embedded: local files; production: S3 through a moto server of its own unless
AWS_S3_ENDPOINT_URL is set), users with API tokens, and one uvicorn process. The synthetic
origin serves each job a distinct file of --file-mib at --rate-mibps, and nothing is reused
(JOB_REUSE=off). The per-user and per-address limits are raised out of the way.

For each pool it starts one Celery worker (--pool threads --concurrency --concurrency, or
--pool prefork --concurrency --prefork-concurrency), runs one job alone (the baseline,
"one job"), measures what the load's bytes cost without the service ("the bytes alone": as
many files of the same size at the same rate, one thread each, through `stage_file` with no
hooks and through plain code, each in a process of its own), then initiates --jobs jobs
through POST /v1/download/initiate, as fast as the API takes them or at --rate a second,
and waits until every job has ended. A job that has not ended once no job of the run has
changed for --give-up-s is lost. Meanwhile it samples the worker's processes (RSS, TCP
connections to Redis) and, on PostgreSQL, its connections in pg_stat_activity. The job times
come from the rows. The worker's CPU per MiB is printed beside the bytes alone's, measured in
the same run. See bench/README.md.
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil  # type: ignore[import-untyped]

from bench.report import Column, Table, log, percentile, ratio, results_save
from bench.sandbox import (
    PgConnectionSampler,
    Stack,
    bench_env,
    broker_purge,
    child_run,
    django_setup,
    every,
    process_tree_cpu_times,
    profile_parts,
    run_until_interrupted,
    start_child,
    stop_child,
    tokens_create,
    var_dir_for,
    wait_ready,
)
from devtools.servers import free_port, wait_for_port
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
GIB = 1024 * MIB
BROKER_DB = 10  # a broker database of its own: no other benchmark's worker takes its jobs
POOLS = ("threads", "prefork")
PROFILES = ("embedded", "production")
# pg_stat_activity names the stack's connections bench-capacity-web and bench-capacity-worker,
# and this script's own bench-capacity.
APPLICATION_PREFIX = "bench-capacity"
WORKER_APPLICATION_NAME = f"{APPLICATION_PREFIX}-worker"
WEB_APPLICATION_NAME = f"{APPLICATION_PREFIX}-web"
FIRST_FILE_ID = 800_000
# Far above any run: the benchmark measures the worker, not the limits.
LIMIT_OUT_OF_THE_WAY = 1_000_000
STARTUP_TIMEOUT_S = 120
WAIT_POLL_S = 0.5
SAMPLE_INTERVAL_S = 0.1
INITIATE_TRIES = 5  # a 429, a 503 or a transport error is tried again after its Retry-After
SELF = [sys.executable, "-m", "bench.capacity"]
# What the figures read of each job's row.
ROW_FIELDS = (
    "job_id",
    "owner_id",
    "status",
    "attempts",
    "error_code",
    "created_at",
    "started_at",
    "completed_at",
    "file_size_bytes",
    "storage_key",
)
# The settings printed with each profile, as the service reads them.
SETTINGS_SHOWN = (
    "JOB_MAX_ACTIVE_PER_USER",
    "JOB_INITIATE_RATE",
    "JOB_INITIATE_RATE_PER_IP",
    "JOB_REUSE",
    "JOB_MAX_ATTEMPTS",
    "JOB_SOFT_TIME_LIMIT_S",
    "SYNTHETIC_FILE_BYTES",
    "SYNTHETIC_RATE_BPS",
    "STAGING_CHUNK_BYTES",
    "STAGING_PART_BYTES",
    "STAGING_PARTS_IN_FLIGHT",
    "REDIS_POOL_MAX_CONNECTIONS",
    "DATABASE_POOL_MAX_SIZE",  # PostgreSQL only
)


# --- the driver: a stack per profile, measured by a subprocess in its environment ----------


def service_env(args: argparse.Namespace) -> dict[str, str]:
    """The stack's settings beyond bench_env's: the origin, no reuse, the limits raised."""
    return {
        "ORIGIN": "synthetic",
        "SYNTHETIC_FILE_BYTES": str(int(args.file_mib * MIB)),
        "SYNTHETIC_RATE_BPS": str(int(args.rate_mibps * MIB)),
        "JOB_REUSE": "off",
        "JOB_MAX_ACTIVE_PER_USER": str(LIMIT_OUT_OF_THE_WAY),
        "JOB_INITIATE_RATE": f"{LIMIT_OUT_OF_THE_WAY}/minute",
        "JOB_INITIATE_RATE_PER_IP": f"{LIMIT_OUT_OF_THE_WAY}/minute",
        "DATABASE_APPLICATION_NAME": APPLICATION_PREFIX,  # this script's own connection
    }


def profile_run(args: argparse.Namespace, profile: str) -> dict[str, Any]:
    """One profile's stack, measured by `capacity.py _profile` in its environment; its figures."""
    with ExitStack() as stack:
        kept = args.var_dir / profile if args.var_dir else None
        var_dir = stack.enter_context(var_dir_for(kept, prefix=f"bench-capacity-{profile}-"))
        log_dir = var_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log(f"\ncapacity: setting up the {profile} stack in {var_dir}")
        database_url, storage_env, storage = profile_parts(
            stack, profile, database=args.pg_database, bucket_prefix="bench-capacity"
        )
        env = bench_env(stack, var_dir, broker_db=BROKER_DB, database_url=database_url)
        env |= storage_env | service_env(args)
        database = f"PostgreSQL database {args.pg_database}" if database_url else "SQLite"
        redis = f"Redis {os.environ['REDIS_URL']}" if os.environ.get("REDIS_URL") else "a private Redis"
        spec = {
            "profile": profile,
            "parts": f"{database}, {redis}, {storage}",
            "database": args.pg_database if database_url else None,
            "log_dir": str(log_dir),
            "options": {
                key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            },
        }
        (var_dir / "spec.json").write_text(json.dumps(spec))
        out = var_dir / "figures.json"
        # Interrupted, it stops its processes, then this stack goes.
        code = child_run([*SELF, "_profile", str(var_dir / "spec.json"), str(out)], env=env)
        if code != 0 or not out.exists():
            return {"profile": profile, "parts": spec["parts"], "error": f"its run exited with {code}"}
        figures: dict[str, Any] = json.loads(out.read_text())
        log(f"capacity: stopping the {profile} stack")
    return figures


def driver_main(args: argparse.Namespace) -> int:
    profiles = PROFILES if args.profile == "both" else (args.profile,)
    started = time.monotonic()
    log(
        f"capacity: {args.jobs} jobs of {args.file_mib:g} MiB at {args.rate_mibps:g} MiB/s "
        f"(~{transfer_s(args):.1f} s each), initiated by {args.users} users "
        + (f"at {args.rate:g}/s" if args.rate else "as fast as the API takes them")
        + f"; profiles {', '.join(profiles)}; pools "
        + ", ".join(pool_label(args, pool) for pool in args.pools)
        + f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start"
    )
    results = [profile_run(args, profile) for profile in profiles]
    clean = report(results, args)
    log(f"\ncapacity: {time.monotonic() - started:.0f} s in all; load average now {os.getloadavg()[0]:.2f}")
    if args.save:
        results_save("capacity", {"options": vars(args), "profiles": results, "clean": clean})
    return 0 if clean else 1


def transfer_s(args: argparse.Namespace) -> float:
    return args.file_mib / args.rate_mibps if args.rate_mibps else 0.0


def pool_concurrency(args: argparse.Namespace, pool: str) -> int:
    return int(args.concurrency if pool == "threads" else args.prefork_concurrency)


def pool_label(args: argparse.Namespace, pool: str) -> str:
    return f"{pool} x{pool_concurrency(args, pool)}"


# --- the measurement: a subprocess with the stack's environment (`capacity.py _profile`) ---


@dataclass
class Initiated:
    """One initiate, with its tries: the job it created (None: refused every time)."""

    job_id: str | None
    latency_s: float  # of the try that was accepted
    refusals: list[str] = field(default_factory=list)  # "429 RATE_LIMIT_EXCEEDED", "ConnectError"


async def initiate(client: httpx.AsyncClient, file_id: int) -> Initiated:
    refusals: list[str] = []
    for _ in range(INITIATE_TRIES):
        began = time.perf_counter()
        try:
            response = await client.post("/v1/download/initiate", json={"file_id": file_id})
        except httpx.HTTPError as exc:
            refusals.append(type(exc).__name__)
            await asyncio.sleep(1.0)
            continue
        if response.status_code == 200:
            return Initiated(response.json()["data"]["job_id"], time.perf_counter() - began, refusals)
        code = ""
        with suppress(ValueError, KeyError, TypeError):
            code = response.json()["error"]["code"]
        refusals.append(f"{response.status_code} {code}".strip())
        if response.status_code != 429 and response.status_code < 500:
            break  # a bad request stays bad
        with suppress(ValueError):
            await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 10.0))
    return Initiated(None, float("nan"), refusals)


async def initiates_send(
    base_url: str, tokens: list[str], file_ids: list[int], rate: float
) -> list[Initiated]:
    """One initiate per file id, by the users in turn, as many at once as there are users;
    with `rate`, the k-th is sent no earlier than k / rate seconds after the first."""
    async with AsyncExitStack() as clients_stack:
        clients = [
            await clients_stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30)
            )
            for token in tokens
        ]
        slots = asyncio.Semaphore(len(clients))
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def one(index: int, file_id: int) -> Initiated:
            if rate:
                await asyncio.sleep(max(0.0, began + index / rate - loop.time()))
            async with slots:
                return await initiate(clients[index % len(clients)], file_id)

        return list(await asyncio.gather(*(one(index, file_id) for index, file_id in enumerate(file_ids))))


def redis_address() -> tuple[str, int]:
    """The address the worker's Redis connections go to (REDIS_URL's)."""
    url = urlsplit(os.environ["REDIS_URL"])
    return socket.gethostbyname(url.hostname or "127.0.0.1"), url.port or 6379


@dataclass(frozen=True)
class WorkerNow:
    """The worker's processes at one moment; None: not read this time."""

    rss: int  # bytes, summed over its processes
    pss: int | None  # the same as PSS
    redis: int | None  # its established TCP connections to Redis
    processes: int


class WorkerSampler:
    """The worker's processes (its main process and, with prefork, its children) in a thread:
    every `interval_s` the sum of their RSS; every `slow_every` samples, the slower figures:
    the processes again (finding them scans every process of the machine), the sum of their
    PSS, which divides each shared page among the processes that share it, so the prefork
    children's inherited memory counts once (reading it walks each process's mappings:
    about 5 ms per 200 MiB), and their TCP connections to Redis, each counted once whichever
    processes share it (reading them parses the machine's whole TCP table, per process;
    connections to Redis live long). The peak of each."""

    def __init__(
        self, pid: int, redis: tuple[str, int], interval_s: float = SAMPLE_INTERVAL_S, slow_every: int = 10
    ) -> None:
        self.pid = pid
        self.redis = redis
        self.interval_s = interval_s
        self.slow_every = slow_every
        self.tree: list[Any] = []
        self.samples = 0
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_redis = 0
        self.peak_processes = 0
        self.running = ExitStack()

    def processes(self) -> list[Any]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def redis_connections(self, process: Any) -> set[tuple[str, int]]:
        return {
            (connection.laddr.ip, connection.laddr.port)
            for connection in process.net_connections(kind="tcp")
            if connection.raddr
            and (connection.raddr.ip, connection.raddr.port) == self.redis
            and connection.status == psutil.CONN_ESTABLISHED
        }

    def measure(self, *, slow: bool = True) -> WorkerNow:
        """Now; with `slow`, the slower figures too."""
        if slow:
            self.tree = self.processes()
        rss = pss = 0
        redis: set[tuple[str, int]] = set()
        for process in self.tree:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss += process.memory_info().rss
                if slow:
                    pss += process.memory_full_info().pss
                    redis |= self.redis_connections(process)
        if not slow:
            return WorkerNow(rss=rss, pss=None, redis=None, processes=len(self.tree))
        return WorkerNow(rss=rss, pss=pss, redis=len(redis), processes=len(self.tree))

    def sample(self) -> None:
        now = self.measure(slow=self.samples % self.slow_every == 0)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, now.rss)
        self.peak_pss = max(self.peak_pss, now.pss or 0)
        self.peak_redis = max(self.peak_redis, now.redis or 0)
        self.peak_processes = max(self.peak_processes, now.processes)

    def __enter__(self) -> "WorkerSampler":
        self.running.enter_context(every(self.interval_s, self.sample, name="worker-sampler"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.close()


def jobs_wait(job_ids: list[str], worker: subprocess.Popen[str], give_up_s: float) -> str:
    """Until every job has ended; or until no job has changed (a row write, bytes staged)
    for `give_up_s`, or the worker has exited. Says which."""
    from jobs import hotstate
    from jobs.models import ACTIVE_STATUSES, DownloadJob

    last: tuple[int, int, int] | None = None
    changed_at = time.monotonic()
    next_line = changed_at + 10
    while True:
        active = dict(
            DownloadJob.objects.filter(job_id__in=job_ids, status__in=ACTIVE_STATUSES).values_list(
                "job_id", "version"
            )
        )
        if not active:
            return "every job ended"
        if worker.poll() is not None:
            return f"the worker exited with {worker.returncode}"
        hot = hotstate.progress_read_many(list(active))
        state = (len(active), sum(active.values()), sum(progress.bytes_done for progress in hot.values()))
        now = time.monotonic()
        if state != last:
            last, changed_at = state, now
        elif now - changed_at > give_up_s:
            return f"no job changed for {give_up_s:g} s"
        if now >= next_line:
            log(f"    {len(job_ids) - len(active)} of {len(job_ids)} jobs ended")
            next_line += 10
        time.sleep(WAIT_POLL_S)


def rows_read(job_ids: list[str]) -> list[dict[str, Any]]:
    from jobs.models import DownloadJob

    return list(DownloadJob.objects.filter(job_id__in=job_ids).values(*ROW_FIELDS))


def stored_files(owner_ids: set[int]) -> tuple[Counter[str], Counter[str]]:
    """Per job id: its stored files (one per attempt that completed its upload), and its
    unfinished uploads (local part files, open S3 multipart uploads)."""
    from django.conf import settings

    from jobs.transfer.s3_clients import s3_object_key
    from jobs.transfer.storage import downloads_storage, s3_storage

    storage = downloads_storage()
    stored: Counter[str] = Counter()
    unfinished: Counter[str] = Counter()
    for owner_id in owner_ids:
        # `job_<hex>-<attempt>`, and `job_<hex>-<attempt>.<upload>.part` while it is written
        with suppress(FileNotFoundError):
            for name in storage.listdir(f"{settings.DOWNLOADS_LOCATION}/{owner_id}")[1]:
                (unfinished if name.endswith(".part") else stored)[name.split("-")[0]] += 1
    if (s3 := s3_storage(storage)) is not None:
        client = s3.connection.meta.client
        prefix = s3_object_key(s3, settings.DOWNLOADS_LOCATION) + "/"
        for page in client.get_paginator("list_multipart_uploads").paginate(
            Bucket=s3.bucket_name, Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                unfinished[upload["Key"].rsplit("/", 1)[-1].split("-")[0]] += 1
    return stored, unfinished


def seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if later and earlier else None


@dataclass
class Outcomes:
    """How the load's jobs stood when the wait ended, and what storage held for them."""

    jobs: int = 0
    not_initiated: int = 0
    completed: int = 0
    completed_once: int = 0
    retried: int = 0  # more than one attempt
    failed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    lost: int = 0  # not ended when the wait gave up
    wrong_size: int = 0  # completed, but the stored file's size is not the file's
    extra_files: int = 0  # stored files beyond one per completed job
    unfinished_uploads: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # initiate answers tried again


def outcomes_of(initiated: list[Initiated], rows: list[dict[str, Any]], file_bytes: int) -> Outcomes:
    from jobs.models import ACTIVE_STATUSES, Status
    from jobs.transfer.storage import downloads_storage

    storage = downloads_storage()
    stored, unfinished = stored_files({row["owner_id"] for row in rows})
    outcome = Outcomes(jobs=len(initiated), not_initiated=sum(1 for sent in initiated if sent.job_id is None))
    outcome.refusals = dict(Counter(refusal for sent in initiated for refusal in sent.refusals))
    failed_by_code: Counter[str] = Counter()
    for row in rows:
        job_id = row["job_id"]
        outcome.retried += row["attempts"] > 1
        outcome.lost += row["status"] in ACTIVE_STATUSES
        outcome.cancelled += row["status"] == Status.CANCELLED
        outcome.unfinished_uploads += unfinished[job_id]
        if row["status"] == Status.FAILED:
            failed_by_code[row["error_code"] or "(none)"] += 1
        if row["status"] != Status.COMPLETED:
            outcome.extra_files += stored[job_id]
            continue
        outcome.completed += 1
        outcome.extra_files += max(0, stored[job_id] - 1)
        size = storage.size(row["storage_key"]) if stored[job_id] else None
        right_size = size == row["file_size_bytes"] == file_bytes
        outcome.wrong_size += not right_size
        once = row["attempts"] == 1 and stored[job_id] == 1 and not unfinished[job_id]
        outcome.completed_once += once and right_size
    outcome.failed = sum(failed_by_code.values())
    outcome.failed_by_code = dict(failed_by_code.most_common())
    return outcome


@dataclass
class PoolFigures:
    """What one pool's run measured; times in seconds, sizes in bytes."""

    pool: str
    concurrency: int
    one_job_s: float | None
    one_job_outcome: str
    makespan_s: float | None
    latency_s: list[float]  # created -> completed, the completed jobs, sorted
    queue_wait_s: list[float]  # created -> started, the jobs of one attempt, sorted
    initiate_s: float  # from the first initiate sent to the last answered
    initiate_latency_s: list[float]
    load_s: float  # from the first initiate sent to the end of the wait
    machine_busy: float  # the machine's CPU busy over the load, 0..1 (all its cores)
    burst: bool  # the jobs were queued first, then released to the worker at once
    wait_end: str
    rss_idle: int
    rss_peak: int
    pss_idle: int
    pss_peak: int
    processes: int
    cpu_s: float  # user + system
    cpu_user_s: float
    cpu_system_s: float
    staged_bytes: int
    pg_worker_peak: int | None
    pg_web_peak: int | None
    pg_sampler_error: str | None
    redis_idle: int
    redis_peak: int
    client_cpu_s: float  # this process's over the load: initiates, sampling, polling
    outcomes: Outcomes
    bytes_alone: dict[str, "BytesFigures"]  # by path (BYTES_PATHS), measured right before the load
    worker_exit: int | None = None  # its exit status once stopped


def job_ids_of(initiated: list[Initiated]) -> list[str]:
    return [sent.job_id for sent in initiated if sent.job_id is not None]


@dataclass
class ProfileRun:
    """What the pools of a profile's run share."""

    stack: Stack  # its web process is running
    options: argparse.Namespace
    tokens: list[str]
    file_ids: Iterator[int]  # a fresh file id for every job
    database: str | None  # the PostgreSQL database's name; None on SQLite


def one_job_run(run: ProfileRun, worker: subprocess.Popen[str]) -> tuple[float | None, str]:
    """One job alone, start to end: its time (created -> completed, from its row) and status."""
    sent = asyncio.run(initiates_send(run.stack.base_url, run.tokens[:1], [next(run.file_ids)], rate=0))
    job_ids = job_ids_of(sent)
    if not job_ids:
        return None, f"not initiated ({', '.join(sent[0].refusals)})"
    jobs_wait(job_ids, worker, run.options.give_up_s)
    (row,) = rows_read(job_ids)
    return seconds(row["completed_at"], row["created_at"]), row["status"]


def worker_name(pool: str) -> str:
    return f"bench-capacity-{pool}-{os.getpid()}"


def pool_run(run: ProfileRun, pool: str) -> PoolFigures:
    """One worker of `pool`, measured (`pool_measure`), then stopped: a warm shutdown, which
    lets the jobs it still runs finish (killed after 30 s), and what it left queued is purged,
    as it is not the next pool's to run."""
    stack = run.stack
    concurrency = pool_concurrency(run.options, pool)
    name = f"worker-{pool}"
    argv = processes.worker_argv(
        concurrency=concurrency,
        name=f"{worker_name(pool)}@%h",
        extra=("--without-gossip", "--without-mingle"),
    )
    # The pool comes from the settings (see processes.worker_argv).
    env = stack.env | {"WORKER_POOL": pool, "WORKER_CONCURRENCY": str(concurrency)}
    log(f"  {pool_label(run.options, pool)}: starting the worker")
    worker = stack.start(name, argv, env=env, kind="worker")
    try:
        stack.wait_worker_ready(name, STARTUP_TIMEOUT_S)
        figures = pool_measure(run, worker, pool)
    finally:
        stack.stop(worker)
        broker_purge()
    figures.worker_exit = worker.returncode
    return figures


def pool_measure(run: ProfileRun, worker: subprocess.Popen[str], pool: str) -> PoolFigures:
    """A ready worker: idle, one job alone, then the load, and the rows and stored files as
    the wait left them (a job still active then is lost, whatever the worker's shutdown does
    with it)."""
    options, base_url = run.options, run.stack.base_url
    time.sleep(1.0)  # the pool settles: prefork children import what they import
    sampler = WorkerSampler(worker.pid, redis_address())
    idle = sampler.measure()
    one_job_s, one_job_outcome = one_job_run(run, worker)
    alone = f"{one_job_outcome} in {one_job_s or float('nan'):.1f} s"
    log(f"  {pool}: one job alone: {alone}; now the load's bytes without the service")
    bytes_alone = bytes_measure(run, pool)
    log(f"  {pool}: now {options.jobs} jobs")
    pg_sampler = None
    if run.database:
        pg_sampler = PgConnectionSampler(
            os.environ["DATABASE_URL"], run.database, interval_s=SAMPLE_INTERVAL_S
        )
    ids = [next(run.file_ids) for _ in range(options.jobs)]
    node = f"{worker_name(pool)}@{socket.gethostname()}"
    if options.burst:
        consuming(node, on=False)
    cpu_before, client_before = process_tree_cpu_times(worker.pid), time.process_time()
    machine_before = psutil.cpu_times()
    began = time.monotonic()
    released_at: datetime | None = None
    with sampler, pg_sampler or nullcontext():
        initiated = asyncio.run(initiates_send(base_url, run.tokens, ids, options.rate))
        initiate_s = time.monotonic() - began
        if options.burst:
            released_at = datetime.now(tz=UTC)
            consuming(node, on=True)
        wait_end = jobs_wait(job_ids_of(initiated), worker, options.give_up_s)
    load_s = time.monotonic() - began
    machine_busy = cpu_busy(machine_before, psutil.cpu_times())
    cpu_after, client_cpu_s = process_tree_cpu_times(worker.pid), time.process_time() - client_before
    cpu_user_s, cpu_system_s = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    rows = rows_read(job_ids_of(initiated))
    outcomes = outcomes_of(initiated, rows, int(options.file_mib * MIB))
    log(f"  {pool}: {wait_end} after {load_s:.1f} s; stopping the worker")
    completed = [row for row in rows if row["completed_at"] is not None]
    started = [row for row in rows if row["attempts"] == 1 and row["started_at"] is not None]
    # From the first initiate, or from the release of a burst; latency and queue wait too.
    since = {row["job_id"]: released_at or row["created_at"] for row in rows}
    makespan = None
    if completed:
        makespan = seconds(max(row["completed_at"] for row in completed), min(since.values()))
    return PoolFigures(
        pool=pool,
        concurrency=pool_concurrency(options, pool),
        one_job_s=one_job_s,
        one_job_outcome=one_job_outcome,
        makespan_s=makespan,
        latency_s=sorted(seconds(row["completed_at"], since[row["job_id"]]) or 0.0 for row in completed),
        queue_wait_s=sorted(seconds(row["started_at"], since[row["job_id"]]) or 0.0 for row in started),
        initiate_s=initiate_s,
        initiate_latency_s=sorted(sent.latency_s for sent in initiated if sent.job_id is not None),
        load_s=load_s,
        machine_busy=machine_busy,
        burst=options.burst,
        wait_end=wait_end,
        rss_idle=idle.rss,
        rss_peak=sampler.peak_rss,
        pss_idle=idle.pss or 0,
        pss_peak=sampler.peak_pss,
        processes=sampler.peak_processes,
        cpu_s=cpu_user_s + cpu_system_s,
        cpu_user_s=cpu_user_s,
        cpu_system_s=cpu_system_s,
        staged_bytes=sum(row["file_size_bytes"] or 0 for row in completed),
        pg_worker_peak=pg_sampler.peak_by_name[WORKER_APPLICATION_NAME] if pg_sampler else None,
        pg_web_peak=pg_sampler.peak_by_name[WEB_APPLICATION_NAME] if pg_sampler else None,
        pg_sampler_error=pg_sampler.error if pg_sampler else None,
        redis_idle=idle.redis or 0,
        redis_peak=sampler.peak_redis,
        client_cpu_s=client_cpu_s,
        outcomes=outcomes,
        bytes_alone=bytes_alone,
    )


def consuming(node: str, *, on: bool) -> None:
    """Makes the worker `node` stop or start taking messages from every queue (Celery's
    remote control): a burst's jobs wait queued, then reach a worker that has room for all."""
    from celery import current_app

    from jobs.queues import QUEUES

    control = current_app.control
    for queue in QUEUES:
        action = control.add_consumer if on else control.cancel_consumer
        replies = action(queue, destination=[node], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"{node} did not answer {'add' if on else 'cancel'}_consumer {queue}")


def cpu_busy(before: Any, after: Any) -> float:
    """The share of the machine's CPU time (all cores) spent busy between two readings."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    return 1 - idle / total if total > 0 else float("nan")


def settings_in_effect() -> dict[str, Any]:
    from django.conf import settings

    return {name: getattr(settings, name, "(not a setting)") for name in SETTINGS_SHOWN}


def profile_main(spec: dict[str, Any], out: Path) -> None:
    """The stack's users and web process, then a worker per pool, each measured in turn."""
    django_setup()
    options = argparse.Namespace(**spec["options"])
    tokens = tokens_create(options.users, prefix="capacity")
    figures: dict[str, Any] = {
        "profile": spec["profile"],
        "parts": spec["parts"],
        "settings": settings_in_effect(),
        "pools": {},
    }
    log(f"capacity: {spec['profile']}: {spec['parts']}")
    log(
        "  settings in effect: " + ", ".join(f"{name} {value}" for name, value in figures["settings"].items())
    )
    stack = Stack(dict(os.environ), Path(spec["log_dir"]), application_prefix=APPLICATION_PREFIX)
    run = ProfileRun(stack, options, tokens, itertools.count(FIRST_FILE_ID), spec["database"])
    try:
        port = free_port()
        web = stack.start(
            "web", processes.web_argv(port=port, extra=("--no-access-log", "--log-level", "warning"))
        )
        wait_for_port(port, timeout_s=STARTUP_TIMEOUT_S, process=web)
        stack.base_url = f"http://127.0.0.1:{port}"
        wait_ready(stack.base_url, stack, STARTUP_TIMEOUT_S)
        for pool in options.pools:
            try:
                measured = pool_run(run, pool)
            except RuntimeError as exc:  # a process exited or never got ready: said, and the next pool runs
                log(f"  {pool}: could not finish: {exc}")
                figures["pools"][pool] = {"pool": pool, "error": str(exc).splitlines()[0]}
                continue
            figures["pools"][pool] = asdict(measured)
    finally:
        stack.stop_all()
    stack.print_log_problems(failed=not all(pool_clean(pool) for pool in figures["pools"].values()))
    out.write_text(json.dumps(figures, default=str))


# --- the bytes alone: the load's bytes without the service (`capacity.py _bytes`) -------------

# What the bytes cost without the service, measured right before each pool's load: on a
# virtual machine the kernel's share of moving a MiB (into the page cache, into a socket)
# varies several-fold with the state of the memory it lands in, so the worker's CPU per MiB
# is read against this, measured in the same run, and not only against a fixed figure.
# Each path runs --jobs files at once, one thread each, in a process of its own with the
# profile's environment, so the same origin (ORIGIN, SYNTHETIC_FILE_BYTES, SYNTHETIC_RATE_BPS),
# chunks, parts and storage as the worker's jobs, with nothing of the service around them.
BYTES_PATHS = {
    # The project's own code for the bytes: the origin's chunks, their sha256, and the
    # storage's writes (a part file fsynced per part, or the S3 multipart upload with the
    # process's shared client, upload threads and part budget). No job, row, Redis, event
    # or Celery.
    "alone": "stage_file with no hooks",
    # The same chunks and sha256 through plain code: a file written chunk by chunk and
    # fsynced per STAGING_PART_BYTES, or boto3's upload_fileobj (one thread per file, parts
    # of STAGING_PART_BYTES) with one client shared by the threads.
    "bare": "plain file writes / boto3 upload_fileobj",
}
BYTES_FIRST_FILE_ID = 900_000  # any ids do: a synthetic file costs the same whatever its id
BYTES_ERRORS_KEPT = 5


@dataclass
class BytesFigures:
    """What one path of the bytes alone cost its process; times in seconds, sizes in bytes."""

    path: str
    files: int  # stored, each of the file's size
    stored_bytes: int
    wall_s: float
    cpu_user_s: float  # of the whole process, from the files' start to their end
    cpu_system_s: float
    rss_peak: int  # the process's, over its life (its imports included, as the worker's are)
    # The first few failures ("JobError: ..."), or why the path has no figures.
    errors: list[str] = field(default_factory=list)


def bytes_store_alone(file_id: int, key: str) -> None:
    from jobs.transfer.origins import get_origin
    from jobs.transfer.staging import NoHooks, stage_file

    stage_file(origin=get_origin(), file_id=file_id, key=key, hooks=NoHooks())


def bytes_store_bare(file_id: int, key: str, s3_client: Any) -> None:
    """The chunks, hashed, into a plain file or through boto3's upload_fileobj, where the
    project would store `key`."""
    from django.conf import settings

    from jobs.transfer.origins import get_origin
    from jobs.transfer.s3_clients import s3_object_key
    from jobs.transfer.storage import downloads_storage, s3_storage

    part_bytes = settings.STAGING_PART_BYTES
    digest = hashlib.sha256()
    storage = downloads_storage()
    with get_origin().open(file_id, chunk_bytes=settings.STAGING_CHUNK_BYTES) as source:
        if (s3 := s3_storage(storage)) is not None:
            from boto3.s3.transfer import TransferConfig

            from bench.streams import ChunkStream

            def hashed() -> Iterator[bytes]:
                for chunk in source.chunks:
                    digest.update(chunk)
                    yield chunk

            config = TransferConfig(
                multipart_threshold=part_bytes, multipart_chunksize=part_bytes, use_threads=False
            )
            name = s3_object_key(s3, key)
            s3_client.upload_fileobj(ChunkStream(hashed()), s3.bucket_name, name, Config=config)
            return
        path = Path(storage.path(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        unsynced = 0
        with path.open("wb") as handle:
            for chunk in source.chunks:
                digest.update(chunk)
                handle.write(chunk)
                unsynced += len(chunk)
                if unsynced >= part_bytes:
                    handle.flush()
                    os.fsync(handle.fileno())
                    unsynced = 0


def bytes_main(path: str, spec: dict[str, Any], out: Path) -> None:
    """One path of the bytes alone: its files in as many threads, started together, then
    checked and deleted (neither measured)."""
    django_setup()
    from django.conf import settings

    from downloads_project.celery import malloc_tune
    from jobs.transfer.s3_clients import s3_client
    from jobs.transfer.storage import downloads_storage, s3_storage, stored_file_delete, stored_file_size

    if settings.WORKER_MALLOC_TUNE:
        malloc_tune()  # as the worker's process has it
    # What a worker has made before its load (its one job alone): the storage, and on S3
    # the client the threads share.
    s3 = s3_storage(downloads_storage())
    client = s3_client(s3) if s3 is not None else None
    store = bytes_store_alone if path == "alone" else partial(bytes_store_bare, s3_client=client)
    keys = [f"{spec['key_prefix']}/{path}/{index}.bin" for index in range(spec["jobs"])]
    errors: list[str] = []
    start = threading.Barrier(len(keys) + 1)

    def one(index: int) -> None:
        start.wait()
        try:
            store(BYTES_FIRST_FILE_ID + index, keys[index])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=one, args=(index,), name=f"bytes-{index}") for index in range(len(keys))
    ]
    for thread in threads:
        thread.start()
    before, began = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    start.wait()
    for thread in threads:
        thread.join()
    wall_s, after = time.monotonic() - began, resource.getrusage(resource.RUSAGE_SELF)
    sizes = [stored_file_size(key) for key in keys]
    for key in keys:
        stored_file_delete(key)
    right = [size for size in sizes if size is not None and size == settings.SYNTHETIC_FILE_BYTES]
    if len(right) < len(keys) and not errors:
        errors.append(f"{len(keys) - len(right)} files stored with another size than the file's")
    figures = BytesFigures(
        path=path,
        files=len(right),
        stored_bytes=sum(right),
        wall_s=wall_s,
        cpu_user_s=after.ru_utime - before.ru_utime,
        cpu_system_s=after.ru_stime - before.ru_stime,
        rss_peak=after.ru_maxrss * 1024,  # KiB on Linux
        errors=errors[:BYTES_ERRORS_KEPT],
    )
    out.write_text(json.dumps(asdict(figures)))


def bytes_measure(run: ProfileRun, pool: str) -> dict[str, BytesFigures]:
    """Each path of the bytes alone (`capacity.py _bytes`), one after the other, its output
    in the stack's logs as `bytes-<pool>-<path>.log`."""
    options = run.options
    spec = {"jobs": options.jobs, "key_prefix": f"bench-bytes-{pool}"}
    timeout_s = STARTUP_TIMEOUT_S + options.give_up_s + 2 * transfer_s(options)
    measured: dict[str, BytesFigures] = {}
    for path, label in BYTES_PATHS.items():
        if path == "bare" and not options.bare:
            continue
        name = f"bytes-{pool}-{path}"
        out = run.stack.log_dir.parent / f"{name}.json"
        argv = [*SELF, "_bytes", path, json.dumps(spec), str(out)]
        process = start_child(argv, env=dict(os.environ), log_path=run.stack.log_path(name))
        try:
            code: int | str = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = f"not done within {timeout_s:.0f} s"
        finally:
            if process.poll() is None:  # late, or interrupted
                stop_child(process, graceful_s=0)
        if code != 0 or not out.exists():
            failed = f"its process exited with {code}" if isinstance(code, int) else code
            measured[path] = BytesFigures(
                path=path,
                files=0,
                stored_bytes=0,
                wall_s=0.0,
                cpu_user_s=0.0,
                cpu_system_s=0.0,
                rss_peak=0,
                errors=[f"{failed} (see {name}.log)"],
            )
        else:
            measured[path] = BytesFigures(**json.loads(out.read_text()))
        figures = measured[path]
        cpu_s = figures.cpu_user_s + figures.cpu_system_s
        log(
            f"  {pool}: the bytes {path} ({label}): {figures.files} of {options.jobs} files in "
            f"{figures.wall_s:.1f} s, CPU {cpu_s:.2f} s (user {figures.cpu_user_s:.2f}, system "
            f"{figures.cpu_system_s:.2f}), {ratio(cpu_s * 1000, figures.stored_bytes / MIB):.2f} ms per MiB"
            + (f"; {'; '.join(figures.errors)}" if figures.errors else "")
        )
    return measured


# --- the report --------------------------------------------------------------------------------


def pool_clean(figures: dict[str, Any]) -> bool:
    """Every job, and the one job alone, completed exactly once."""
    if figures.get("error"):
        return False
    outcomes = figures["outcomes"]
    return bool(
        figures["one_job_outcome"] == "completed"
        and outcomes["completed_once"] == outcomes["jobs"]
        and not outcomes["extra_files"]
        and not outcomes["unfinished_uploads"]
    )


def rows_of(results: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(profile, pool figures) of every pool that ran to its end."""
    for result in results:
        for figures in result.get("pools", {}).values():
            if not figures.get("error"):
                yield result["profile"], figures


def mib(value: float) -> float:
    return value / MIB


# Each table's first two columns: which profile and pool a row is of (`row_names`).
NAME_COLUMNS = (Column("profile", 10, align="<"), Column("pool", 12, align="<"))


def row_names(profile: str, figures: dict[str, Any]) -> tuple[str, str]:
    return profile, f"{figures['pool']} x{figures['concurrency']}"


TIMES_TABLE = Table(
    *NAME_COLUMNS,
    Column("one job\ns", 7, ".1f"),
    Column("makespan\ns", 8, ".1f"),
    Column("makespan\n/ one job", 9, ".2f"),
    Column("latency s\np50", 9, ".1f"),
    Column("\np95", 6, ".1f"),
    Column("queue wait s\np50", 12, ".1f"),
    Column("\np95", 6, ".1f"),
    Column("initiates\n/s", 9, ".0f"),
    Column("initiate ms\np50", 11, ".0f"),
    Column("\np95", 6, ".0f"),
    Column("machine\nCPU busy", 8, ".0%"),
)


def times_print(results: list[dict[str, Any]]) -> None:
    log(
        "\ntimes (from the rows: created_at, started_at of the only attempt, completed_at; with "
        "--burst from the moment the queued jobs were released to the worker; machine CPU busy: "
        "all the machine's cores over the load, every process on it)"
    )
    TIMES_TABLE.print_header()
    for profile, figures in rows_of(results):
        one_job = figures["one_job_s"] or float("nan")
        makespan = figures["makespan_s"] or float("nan")
        initiate_ms = [value * 1000 for value in figures["initiate_latency_s"]]
        TIMES_TABLE.print_row(
            *row_names(profile, figures),
            one_job,
            makespan,
            ratio(makespan, one_job),
            percentile(figures["latency_s"], 50),
            percentile(figures["latency_s"], 95),
            percentile(figures["queue_wait_s"], 50),
            percentile(figures["queue_wait_s"], 95),
            ratio(figures["outcomes"]["jobs"], figures["initiate_s"]),
            percentile(initiate_ms, 50),
            percentile(initiate_ms, 95),
            figures["machine_busy"],
        )


RESOURCES_TABLE = Table(
    *NAME_COLUMNS,
    Column("RSS MiB\nidle", 7, ".0f"),
    Column("\npeak", 6, ".0f"),
    Column("PSS MiB\nidle", 7, ".0f"),
    Column("\npeak", 6, ".0f"),
    Column("procs", 5),
    Column("CPU s", 7, ".1f"),
    Column("cores", 5, ".2f"),
    Column("CPU s\n/ GiB", 6, ".1f"),
    Column("CPU ms\n/ MiB", 6, ".2f"),
    Column("PG conns\nworker", 8),
    Column("\nweb", 4),
    Column("Redis conns\nidle", 11),
    Column("\npeak", 5),
    Column("client\nCPU s", 6, ".1f"),
)


def resources_print(results: list[dict[str, Any]]) -> None:
    log(
        "\nworker resources: idle once ready, peak over the load; RSS sampled every "
        f"{SAMPLE_INTERVAL_S * 1000:.0f} ms, PSS and Redis connections every second (RSS and PSS: the sums "
        "over the worker's processes; PSS counts a page shared by prefork's children once); CPU: user + "
        "system of its processes over the load (cores: CPU s / the load's time); PostgreSQL connections: "
        "sampled every 100 ms; client: this script's CPU over the load"
    )
    RESOURCES_TABLE.print_header()
    for profile, figures in rows_of(results):
        staged = figures["staged_bytes"]
        RESOURCES_TABLE.print_row(
            *row_names(profile, figures),
            mib(figures["rss_idle"]),
            mib(figures["rss_peak"]),
            mib(figures["pss_idle"]),
            mib(figures["pss_peak"]),
            figures["processes"],
            figures["cpu_s"],
            ratio(figures["cpu_s"], figures["load_s"]),
            ratio(figures["cpu_s"], staged / GIB),
            ratio(figures["cpu_s"] * 1000, staged / MIB),
            "-" if figures["pg_worker_peak"] is None else figures["pg_worker_peak"],
            "-" if figures["pg_web_peak"] is None else figures["pg_web_peak"],
            figures["redis_idle"],
            figures["redis_peak"],
            figures["client_cpu_s"],
        )


def ms_per_mib(cpu_s: float, size: int) -> float:
    return ratio(cpu_s * 1000, size / MIB)


BYTES_TABLE = Table(
    *NAME_COLUMNS,
    Column("worker CPU\nms / MiB", 10, ".2f"),
    Column("\nuser", 5, ".2f"),
    Column("\nsys", 5, ".2f"),
    Column("bytes alone\nms / MiB", 11, ".2f"),
    Column("\nuser", 5, ".2f"),
    Column("\nsys", 5, ".2f"),
    Column("worker\n/ alone", 7, ".2f"),
    Column("worker -\nalone", 8, ".2f"),
    Column("bytes bare\nms / MiB", 10, ".2f"),
    Column("\nuser", 5, ".2f"),
    Column("\nsys", 5, ".2f"),
    Column("alone\n/ bare", 6, ".2f"),
    Column("RSS MiB peak\nalone", 12, ".0f"),
    Column("\nbare", 5, ".0f"),
    Column("wall s\nalone", 6, ".1f"),
    Column("\nbare", 5, ".1f"),
)


def bytes_cells(path: dict[str, Any] | None) -> tuple[float, float, float, float, float]:
    """A path of the bytes alone in the table: its CPU in ms per MiB stored (user + system,
    user, system), its RSS peak in MiB and its time; NaN for a path without figures."""
    if not path or not path["stored_bytes"]:
        return (float("nan"),) * 5
    user, system, stored = path["cpu_user_s"], path["cpu_system_s"], path["stored_bytes"]
    return (
        ms_per_mib(user + system, stored),
        ms_per_mib(user, stored),
        ms_per_mib(system, stored),
        mib(path["rss_peak"]),
        path["wall_s"],
    )


def bytes_print(results: list[dict[str, Any]]) -> None:
    log(
        "\nthe cost of the bytes: the worker's CPU per MiB staged (user + system, and each) beside "
        "the same number of files of the same size and rate without the service, measured right before "
        "the load, each path in a process of its own with the profile's settings, one thread per file, "
        f"all at once: alone = {BYTES_PATHS['alone']} (the project's origin, sha256 and storage code), "
        f"bare = {BYTES_PATHS['bare']}; worker / alone: the worker's CPU over the cost of its bytes, "
        "worker - alone: what the service adds, in ms per MiB; alone / bare: the storage code's share"
    )
    BYTES_TABLE.print_header()
    notes = []
    for profile, figures in rows_of(results):
        staged = figures["staged_bytes"]
        paths = figures["bytes_alone"]
        alone_ms, alone_user, alone_system, alone_rss, alone_s = bytes_cells(paths.get("alone"))
        bare_ms, bare_user, bare_system, bare_rss, bare_s = bytes_cells(paths.get("bare"))
        worker_ms = ms_per_mib(figures["cpu_s"], staged)
        BYTES_TABLE.print_row(
            *row_names(profile, figures),
            worker_ms,
            ms_per_mib(figures["cpu_user_s"], staged),
            ms_per_mib(figures["cpu_system_s"], staged),
            alone_ms,
            alone_user,
            alone_system,
            ratio(worker_ms, alone_ms),
            worker_ms - alone_ms,
            bare_ms,
            bare_user,
            bare_system,
            ratio(alone_ms, bare_ms),
            alone_rss,
            bare_rss,
            alone_s,
            bare_s,
        )
        notes += [
            f"{' '.join(row_names(profile, figures))}: the bytes {path}: {'; '.join(path_figures['errors'])}"
            for path, path_figures in paths.items()
            if path_figures["errors"]
        ]
    for note in notes:
        log(f"  {note}")


OUTCOMES_TABLE = Table(
    *NAME_COLUMNS,
    Column("jobs", 5),
    Column("completed", 9),
    Column("once", 5),
    Column("retried", 7),
    Column("failed", 6),
    Column("lost", 5),
    Column("not\ninitiated", 9),
    Column("unfinished\nuploads", 10),
    Column("notes", align="<", before="  "),
)


def outcomes_print(results: list[dict[str, Any]]) -> None:
    log("\noutcomes (once: one attempt, one stored file of the file's size, no unfinished upload)")
    OUTCOMES_TABLE.print_header()
    for result in results:
        if result.get("error"):
            log(f"{result['profile']:<10} the profile's run did not finish: {result['error']}")
        for pool, figures in result.get("pools", {}).items():
            if figures.get("error"):
                log(f"{result['profile']:<10} {pool:<12} could not finish: {figures['error']}")
                continue
            outcomes = figures["outcomes"]
            notes = [f"{code} {count}" for code, count in outcomes["failed_by_code"].items()]
            notes += [
                f"{name} {outcomes[name]}"
                for name in ("cancelled", "wrong_size", "extra_files")
                if outcomes[name]
            ]
            if outcomes["refusals"]:
                notes.append(
                    "initiates tried again: "
                    + ", ".join(f"{k} x{v}" for k, v in outcomes["refusals"].items())
                )
            if figures["one_job_outcome"] != "completed":
                notes.append(f"one job alone: {figures['one_job_outcome']}")
            if figures["wait_end"] != "every job ended":
                notes.append(figures["wait_end"])
            if figures["worker_exit"]:
                notes.append(f"worker exit status {figures['worker_exit']}")
            if figures["pg_sampler_error"]:
                notes.append(f"PG sampler: {figures['pg_sampler_error']}")
            OUTCOMES_TABLE.print_row(
                *row_names(result["profile"], figures),
                outcomes["jobs"],
                outcomes["completed"],
                outcomes["completed_once"],
                outcomes["retried"],
                outcomes["failed"],
                outcomes["lost"],
                outcomes["not_initiated"],
                outcomes["unfinished_uploads"],
                "; ".join(notes) or "-",
            )


def goals_print(results: list[dict[str, Any]]) -> None:
    """Issue 21's goals for the thread pool, each pass or MISS (printed only; the exit status
    follows the outcomes alone)."""
    rows = [
        (result, figures)
        for result in results
        for figures in result.get("pools", {}).values()
        if figures.get("pool") == "threads" and not figures.get("error")
    ]
    if not rows:
        return
    log("\ngoals (the thread pool):")

    def goal(text: str, met: bool) -> None:
        log(f"  {'pass' if met else 'MISS'}  {text}")

    for result, figures in rows:
        where = f"{result['profile']}, threads x{figures['concurrency']}"
        outcomes = figures["outcomes"]
        makespan = ratio(figures["makespan_s"] or float("nan"), figures["one_job_s"] or float("nan"))
        worker_ms = ms_per_mib(figures["cpu_s"], figures["staged_bytes"])
        alone_ms = bytes_cells(figures["bytes_alone"].get("alone"))[0]
        goal(
            f"{where}: {outcomes['completed_once']} of {outcomes['jobs']} jobs completed once",
            outcomes["completed_once"] == outcomes["jobs"],
        )
        goal(
            f"{where}: makespan {makespan:.2f} x one job <= 1.5 (where the CPU is not the limit: "
            f"the machine's CPU was {figures['machine_busy']:.0%} busy; "
            + (
                f"the jobs were queued first, in {figures['initiate_s']:.1f} s, then released at once)"
                if figures["burst"]
                else f"initiating the jobs took {figures['initiate_s']:.1f} s of it)"
            ),
            makespan <= 1.5,
        )
        goal(
            f"{where}: worker CPU {worker_ms:.2f} ms per MiB staged <= 2; the bytes alone cost "
            f"{alone_ms:.2f} ms per MiB in the same run, so the worker spends "
            f"{ratio(worker_ms, alone_ms):.2f} x the cost of its bytes ({worker_ms - alone_ms:.2f} ms per "
            "MiB beyond them)",
            worker_ms <= 2,
        )
        goal(
            f"{where}: worker RSS peak {mib(figures['rss_peak']):.0f} MiB <= 1024", figures["rss_peak"] <= GIB
        )
        if figures["pg_worker_peak"] is not None:
            bound = int(result["settings"]["DATABASE_POOL_MAX_SIZE"])
            goal(
                f"{where}: worker PostgreSQL connections {figures['pg_worker_peak']} <= "
                f"DATABASE_POOL_MAX_SIZE {bound}",
                figures["pg_worker_peak"] <= bound,
            )


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """Prints the tables; whether every job of every pool completed once."""
    log("\n" + "=" * 100)
    log(
        f"capacity: {args.jobs} jobs of {args.file_mib:g} MiB at {args.rate_mibps:g} MiB/s per pool, "
        "one web process and one worker process"
    )
    for result in results:
        log(f"  {result['profile']}: {result['parts']}")
    log("=" * 100)
    times_print(results)
    resources_print(results)
    bytes_print(results)
    outcomes_print(results)
    goals_print(results)
    clean = all(not result.get("error") for result in results) and all(
        pool_clean(figures) for result in results for figures in result.get("pools", {}).values()
    )
    verdict = (
        "OK: every job completed once" if clean else "FAILED: not every job completed once (exit status 1)"
    )
    log(f"\nRESULT: {verdict}")
    return clean


# --- the command line --------------------------------------------------------------------------


def pools_parse(value: str) -> list[str]:
    pools = [pool.strip() for pool in value.split(",") if pool.strip()]
    unknown = [pool for pool in pools if pool not in POOLS]
    if not pools or unknown:
        raise argparse.ArgumentTypeError(f"pools are threads and prefork, comma-separated (not {value!r})")
    return pools


def options_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        choices=(*PROFILES, "both"),
        default="both",
        help="embedded: SQLite, a private Redis, local storage; production: a throwaway PostgreSQL "
        "database on BENCH_POSTGRES_URL's server, Redis, S3 (a moto server of its own unless "
        "AWS_S3_ENDPOINT_URL is set); both, one after the other (default)",
    )
    parser.add_argument(
        "--pools",
        type=pools_parse,
        default=list(POOLS),
        help="the worker's pools, one after the other on each profile's stack: threads, prefork "
        "(default threads,prefork)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="jobs at once of the thread pool (default 200)"
    )
    parser.add_argument(
        "--prefork-concurrency",
        type=int,
        default=4,
        help="processes of the prefork pool (default 4: one job each; 200 processes are not a "
        "sensible configuration on a small machine)",
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs of the load, per pool (default 200)")
    parser.add_argument("--file-mib", type=float, default=8.0, help="each job's file, MiB (default 8)")
    parser.add_argument(
        "--rate-mibps",
        type=float,
        default=1.0,
        help="the synthetic origin's rate per job, MiB/s; 0: unthrottled (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="initiates per second; 0: as fast as the API takes them (default 0)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="queue the load's jobs while the worker takes none (Celery's cancel_consumer), then "
        "release them to it at once: the makespan, latencies and queue waits count from that "
        "moment, so the web process's pace at taking initiates is left out",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=10,
        help="users with a token each, who send the initiates, one at a time each (default 10)",
    )
    parser.add_argument(
        "--give-up-s",
        type=float,
        default=60.0,
        help="a job not ended once no job of the run has changed (a row write, bytes staged) for "
        "this long is lost (default 60)",
    )
    parser.add_argument(
        "--no-bare",
        dest="bare",
        action="store_false",
        help="measure the bytes alone through the project's storage code only, not through plain "
        "code too (on S3 the bare path holds about two parts per file at once: over 3 GiB for 200 "
        "files of 8 MiB)",
    )
    parser.add_argument(
        "--pg-database",
        default="bench_capacity",
        help="the production profile's throwaway database (default bench_capacity; dropped first "
        "if it is left over)",
    )
    parser.add_argument(
        "--var-dir",
        type=Path,
        help="keep each profile's VAR_DIR (database, logs, files) in DIR/<profile>; default: temporary",
    )
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/capacity-*.json"
    )
    return parser


def run(argv: list[str]) -> int:
    if argv and argv[0] == "_profile":
        spec_path, out = Path(argv[1]), Path(argv[2])
        profile_main(json.loads(spec_path.read_text()), out)
        return 0
    if argv and argv[0] == "_bytes":
        bytes_main(argv[1], json.loads(argv[2]), Path(argv[3]))
        return 0
    parser = options_parser()
    args = parser.parse_args(argv)
    if min(args.jobs, args.users, args.concurrency, args.prefork_concurrency) < 1:
        parser.error("--jobs, --users, --concurrency and --prefork-concurrency must be at least 1")
    if args.file_mib <= 0 or args.rate_mibps < 0 or args.rate < 0 or args.give_up_s <= 0:
        parser.error("--file-mib and --give-up-s must be positive, --rate-mibps and --rate not negative")
    return driver_main(args)


if __name__ == "__main__":
    # The driver says it was interrupted; its subprocesses (`_profile`, `_bytes`), interrupted
    # too, do not.
    run_until_interrupted(lambda: run(sys.argv[1:]), announce=sys.argv[1:2] not in (["_profile"], ["_bytes"]))
