"""Staging benchmark: throughput of `jobs.transfer.staging.stage_file` against plain baselines, and
the peak memory of a real Celery worker staging one job. Prints figures; asserts nothing.

    make bench                                   # = python -m stack.embedded \\
                                                 #     .venv/bin/python -m bench.staging
    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.staging \\
        --size-mib 64 --memory-mib 32             # a quick run

Layout: this process (the driver) starts a moto S3 server (unless AWS_S3_ENDPOINT_URL is
set), makes a throwaway VAR_DIR with a SQLite database, migrates it, then runs each
measurement in a subprocess of this script (`_throughput` / `_memory`) whose environment
selects S3 or local storage before `django.setup()`. See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.report import Column, Table, log, ratio, results_save
from bench.sandbox import (
    Children,
    bench_env,
    broker_purge,
    django_setup,
    every,
    interrupted,
    run_until_interrupted,
)
from bench.streams import ChunkStream
from devtools.servers import S3Endpoint, s3_endpoint
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
MB = 1_000_000
BROKER_DB = 9  # a Redis database of the benchmark's own, so no other worker takes its jobs
FILE_ID = 424242
TARGETS = ("s3", "local")
SELF = [sys.executable, "-m", "bench.staging"]  # this script, for its parts (`_throughput`, ...)


# --- small helpers --------------------------------------------------------------------------


def mb_per_s(size: int, seconds: float) -> float:
    return ratio(size, seconds) / MB


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def vm_hwm(pid: int) -> int | None:
    """The kernel's exact peak RSS of a process (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def vm_hwm_reset(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the next peak is the next job's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- throughput (a subprocess: `staging.py _throughput`) ------------------------------------


@dataclass
class Run:
    name: str
    label: str
    run: int
    seconds: float
    cpu_seconds: float


@dataclass
class ThroughputResult:
    target: str
    size: int
    chunk_bytes: int
    part_bytes: int
    source_seconds: float = 0.0
    source_sha_seconds: float = 0.0
    runs: list[Run] = field(default_factory=list)


@dataclass
class Source:
    """The synthetic file that every path writes, its bytes generated on the fly."""

    size: int
    chunk_bytes: int
    sha256: str = ""  # once `source_time` has read it

    def chunks(self) -> Iterator[bytes]:
        from jobs.transfer.origins import synthetic_chunks

        return synthetic_chunks(FILE_ID, self.size, self.chunk_bytes)


Prepared = tuple[Callable[[], object], Callable[[], None]]  # (timed action, check + clean up)
Plan = tuple[str, str, Callable[[str], Prepared]]  # name, label, and its preparation for a key


def timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = action()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def source_time(source: Source, result: ThroughputResult) -> None:
    """The origin side alone: what the synthetic bytes (and their sha256) cost this CPU."""

    def drain() -> None:
        for _ in source.chunks():
            pass

    def digest() -> str:
        sha = hashlib.sha256()
        for chunk in source.chunks():
            sha.update(chunk)
        return sha.hexdigest()

    _, result.source_seconds, _ = timed(drain)
    source.sha256, result.source_sha_seconds, _ = timed(digest)


def project_prepare(hooks_kind: str, source: Source, key: str) -> Prepared:
    """`stage_file` with no-op hooks, or with the real AttemptHooks of a job in `processing`."""
    from django.contrib.auth.models import User

    from jobs.models import DownloadJob
    from jobs.services import download_job_complete, download_job_start
    from jobs.services.attempt_hooks import AttemptHooks
    from jobs.transfer.origins import SyntheticOrigin
    from jobs.transfer.staging import NoHooks, StagedFile, StagingHooks, stage_file
    from jobs.transfer.storage import stored_file_delete

    job = None
    hooks: StagingHooks = NoHooks()
    if hooks_kind == "real":
        # A job row in `processing`, as the worker has it: the hooks write progress to
        # Redis, publish it on the channel layer and check the cancel flag per chunk.
        owner, _ = User.objects.get_or_create(username="bench-throughput")
        row = DownloadJob.objects.create(owner=owner, file_id=FILE_ID, max_attempts=1)
        job = download_job_start(job_pk=row.pk)
        assert job is not None
        key = job.storage_key
        hooks = AttemptHooks(job)
    staged: list[StagedFile] = []

    def action() -> None:
        origin = SyntheticOrigin(size_bytes=source.size, rate_bps=0)
        staged.append(stage_file(origin=origin, file_id=FILE_ID, key=key, hooks=hooks))

    def check() -> None:
        if staged[0].size != source.size or staged[0].sha256 != source.sha256:
            raise RuntimeError(f"staged {staged[0]} is not the synthetic file")
        if job is not None:
            download_job_complete(job=job, attempt=job.attempts, staged=staged[0])
        stored_file_delete(staged[0].key)

    return action, check


def upload_fileobj_prepare(storage: Any, source: Source, config: Any, key: str) -> Prepared:
    """boto3's `upload_fileobj` of the chunks, streamed, with the project's own client (same
    endpoint and config) to the object the project would write for `key`."""
    from storages.utils import safe_join

    client = storage.connection.meta.client
    bucket, name = storage.bucket_name, safe_join(storage.location, key)

    def action() -> None:
        client.upload_fileobj(ChunkStream(source.chunks()), bucket, name, Config=config)

    def check() -> None:
        length = client.head_object(Bucket=bucket, Key=name)["ContentLength"]
        client.delete_object(Bucket=bucket, Key=name)
        if length != source.size:
            raise RuntimeError(f"uploaded {length} bytes, not {source.size}")

    return action, check


def s3_plans(storage: Any, source: Source, part_bytes: int) -> list[Plan]:
    from boto3.s3.transfer import TransferConfig

    threaded = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)
    serial = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes, use_threads=False)
    return [
        (
            "baseline",
            "baseline: boto3 upload_fileobj, default 10 threads",
            partial(upload_fileobj_prepare, storage, source, threaded),
        ),
        (
            "baseline-serial",
            "baseline: boto3 upload_fileobj, 1 thread",
            partial(upload_fileobj_prepare, storage, source, serial),
        ),
    ]


def plain_write_prepare(storage: Any, source: Source, key: str, *, with_sha256: bool = False) -> Prepared:
    """open('wb').write of each chunk into the storage directory (with their sha256)."""
    path = Path(storage.path(key))
    path.parent.mkdir(parents=True, exist_ok=True)

    def action() -> None:
        sha = hashlib.sha256()
        with path.open("wb") as handle:
            for chunk in source.chunks():
                if with_sha256:
                    sha.update(chunk)
                handle.write(chunk)

    def check() -> None:
        length = path.stat().st_size
        path.unlink()
        if length != source.size:
            raise RuntimeError(f"wrote {length} bytes, not {source.size}")

    return action, check


def local_plans(storage: Any, source: Source) -> list[Plan]:
    return [
        (
            "baseline",
            "baseline: plain open('wb').write of the chunks",
            partial(plain_write_prepare, storage, source),
        ),
        (
            "reference-sha256",
            "reference: plain write + sha256 of the chunks",
            partial(plain_write_prepare, storage, source, with_sha256=True),
        ),
    ]


def project_plans(source: Source) -> list[Plan]:
    return [
        ("project", "project: stage_file, no-op hooks", partial(project_prepare, "noop", source)),
        ("project-hooks", "project: stage_file, real AttemptHooks", partial(project_prepare, "real", source)),
    ]


def plans_run(plans: list[Plan], result: ThroughputResult, repeat: int) -> None:
    """Each path in turn, `repeat` times; each result is checked and removed."""
    target, size = result.target, result.size
    for run in range(1, repeat + 1):
        for name, label, prepare in plans:
            key = f"bench/{target}/{name}-{run}.bin"
            action, check = prepare(key)
            _, seconds, cpu_seconds = timed(action)
            check()
            result.runs.append(Run(name, label, run, seconds, cpu_seconds))
            log(f"  [{target}] run {run}: {label}: {seconds:.1f} s, {mb_per_s(size, seconds):.1f} MB/s")


def throughput_main(target: str, size: int, repeat: int, out: Path) -> None:
    django_setup()
    from django.conf import settings
    from storages.backends.s3 import S3Storage

    from jobs.transfer.links import SignedFileSystemStorage
    from jobs.transfer.storage import downloads_storage

    storage = downloads_storage()
    expected = S3Storage if target == "s3" else SignedFileSystemStorage
    if not isinstance(storage, expected):
        raise RuntimeError(f"settings chose {type(storage).__name__}, not {expected.__name__}")
    chunk_bytes, part_bytes = settings.STAGING_CHUNK_BYTES, settings.STAGING_PART_BYTES
    result = ThroughputResult(target=target, size=size, chunk_bytes=chunk_bytes, part_bytes=part_bytes)
    source = Source(size=size, chunk_bytes=chunk_bytes)
    source_time(source, result)
    if isinstance(storage, S3Storage):
        plans = s3_plans(storage, source, part_bytes)
    else:
        plans = local_plans(storage, source)
    plans_run(plans + project_plans(source), result, repeat)
    out.write_text(json.dumps(asdict(result)))


# --- memory (a subprocess: `staging.py _memory`) --------------------------------------------


class TreeSampler:
    """Samples the RSS of a process's children every `interval_s` and keeps each one's peak."""

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peaks: dict[int, int] = {}
        self.running = ExitStack()

    def children(self) -> list[Any]:
        try:
            return list(self.root.children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        for child in self.children():
            try:
                rss = int(child.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)

    def __enter__(self) -> "TreeSampler":
        self.running.enter_context(every(self.interval_s, self.sample, name="rss-sampler"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.close()
        self.sample()


@dataclass
class JobMemory:
    job: int
    child_pid: int
    idle_before: int
    peak_hwm: int | None
    peak_sampled: int
    idle_after: int
    seconds: float


@dataclass
class MemoryResult:
    target: str
    size: int
    chunk_bytes: int
    part_bytes: int
    idle_child: int
    jobs: list[JobMemory] = field(default_factory=list)


@dataclass
class MeasuredWorker:
    """`celery -A downloads_project worker -c 1 --pool prefork`, and its one pool process."""

    children: Children
    target: str
    name: str
    process: subprocess.Popen[str]
    child_pid: int  # its pool process
    idle_child: int  # the pool process's RSS once settled

    def child_rss(self) -> int:
        """The pool process's RSS now (0 if it is gone)."""
        probe = TreeSampler(self.process.pid)
        probe.sample()
        return probe.peaks.get(self.child_pid, 0)


def worker_start(children: Children, target: str, size: int) -> MeasuredWorker:
    """A fresh worker whose synthetic origin serves files of `size`, settled."""
    name = f"worker-{target}-{size}"
    argv = processes.worker_argv(
        concurrency=1,
        name=f"bench-{target}-{size}@%h",
        extra=("--without-gossip", "--without-mingle", "--without-heartbeat"),
    )
    # One pool child, chosen by the setting: Celery takes `--pool prefork` for its default and
    # lets a configured pool (WORKER_POOL) win over it.
    env = {**os.environ, "SYNTHETIC_FILE_BYTES": str(size), "WORKER_POOL": "prefork"}
    process = children.start(name, argv, env=env)
    children.wait_worker_ready(name, timeout_s=60)
    time.sleep(1.0)  # let the pool child settle
    probe = TreeSampler(process.pid)
    probe.sample()
    if len(probe.peaks) != 1:
        raise RuntimeError(f"expected one pool child, found {sorted(probe.peaks)}")
    child_pid = next(iter(probe.peaks))
    return MeasuredWorker(children, target, name, process, child_pid, idle_child=probe.peaks[child_pid])


def job_wait(job: Any, worker: MeasuredWorker) -> None:
    """Until the job ends; an error if the worker stops or an hour passes."""
    from jobs.models import TERMINAL_STATUSES

    deadline = time.monotonic() + 3600
    while job.status not in TERMINAL_STATUSES:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker stopped or timed out:\n{worker.children.log_tail(worker.name)}")
        time.sleep(0.1)
        job.refresh_from_db()


def job_measure(worker: MeasuredWorker, owner: Any, number: int, size: int, created: list[Any]) -> JobMemory:
    """Job `number` on the worker, with its pool process's memory sampled meanwhile."""
    from jobs.models import Status
    from jobs.services import download_job_create
    from jobs.transfer.storage import stored_file_delete

    child_pid = worker.child_pid
    idle_before = worker.child_rss()
    hwm_reset = vm_hwm_reset(child_pid)
    with TreeSampler(worker.process.pid) as sampler:
        job, _ = download_job_create(owner=owner, file_id=FILE_ID + number)
        created.append(job)
        job_wait(job, worker)
    if job.status != Status.COMPLETED or job.file_size_bytes != size:
        raise RuntimeError(f"{job.job_id} ended {job.status} {job.error_code} {job.error_message}")
    if set(sampler.peaks) != {child_pid}:
        raise RuntimeError(f"the pool changed during the job: {sorted(sampler.peaks)}")
    time.sleep(0.5)
    idle_after = worker.child_rss()
    hwm = vm_hwm(child_pid)
    memory = JobMemory(
        job=number,
        child_pid=child_pid,
        idle_before=idle_before,
        # Without a reset, VmHWM also holds earlier jobs' peaks.
        peak_hwm=hwm if (hwm_reset or number == 1) else None,
        peak_sampled=sampler.peaks[child_pid],
        idle_after=idle_after,
        seconds=job.duration_seconds or 0.0,
    )
    stored_file_delete(job.storage_key)
    log(
        f"  [{worker.target}] {mib(size)} MiB job {number}: "
        f"{job.duration_seconds:.1f} s, pool child peak {mib(max(hwm or 0, sampler.peaks[child_pid]))} MiB"
    )
    return memory


def size_measure(
    children: Children, owner: Any, target: str, size: int, jobs: int, created: list[Any]
) -> MemoryResult:
    """A fresh worker for files of `size`, and its `jobs` jobs one at a time."""
    from django.conf import settings

    worker = worker_start(children, target, size)
    result = MemoryResult(
        target=target,
        size=size,
        chunk_bytes=settings.STAGING_CHUNK_BYTES,
        part_bytes=settings.STAGING_PART_BYTES,
        idle_child=worker.idle_child,
    )
    for number in range(1, jobs + 1):
        result.jobs.append(job_measure(worker, owner, number, size, created))
    children.stop(worker.process)
    return result


def jobs_clean(created: list[Any]) -> None:
    """Whatever stopped us, leave no file or unfinished upload behind."""
    from jobs.transfer.storage import stored_file_delete

    for job in created:
        job.refresh_from_db()
        try:
            stored_file_delete(job.storage_key, upload_id=job.upload_id)
        except Exception as exc:
            log(f"  could not clean up {job.storage_key}: {exc}")


def memory_main(target: str, sizes: list[int], jobs: int, out: Path, log_dir: Path) -> None:
    django_setup()
    from django.contrib.auth.models import User

    broker_purge()
    owner, _ = User.objects.get_or_create(username=f"bench-memory-{target}")
    created: list[Any] = []
    results: list[MemoryResult] = []
    # Each worker in a session of its own; stopped with SIGTERM to its group (15 s), or, after
    # a failure, with SIGKILL.
    children = Children(dict(os.environ), log_dir, graceful_s=15, whole_group=True)
    graceful = False
    try:
        for size in sizes:
            results.append(size_measure(children, owner, target, size, jobs, created))
        graceful = True
    finally:
        for _, process in list(children.running):
            children.stop(process, graceful_s=None if graceful else 0)
        jobs_clean(created)
    out.write_text(json.dumps([asdict(result) for result in results]))


# --- the driver -------------------------------------------------------------------------------


def run_part(argv: list[str], env: dict[str, str]) -> None:
    """Runs one measurement subprocess. Ctrl-C reaches it from the terminal too; SIGTERM
    is passed on; either way it is waited for, so it can clean up (then killed)."""
    child = subprocess.Popen([*SELF, *argv], env=env, cwd=ROOT)
    try:
        rc = child.wait()
    except KeyboardInterrupt:
        if interrupted and interrupted[0] == signal.SIGTERM:
            child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise
    if rc != 0:
        raise SystemExit(f"{argv[0]} {' '.join(argv[1:])} failed with exit code {rc}")


THROUGHPUT_TABLE = Table(
    Column("store", 6, align="<"),
    Column("path", 48, align="<"),
    Column("MB/s", 8, ".1f"),
    Column("wall s", 7, ".1f"),
    Column("CPU s", 6, ".1f"),
)


def print_throughput(results: list[dict[str, Any]]) -> None:
    for result in results:
        size = result["size"]
        log(
            f"{result['target']:<6} origin side alone: synthetic_chunks "
            f"{mb_per_s(size, result['source_seconds']):.0f} MB/s, with sha256 "
            f"{mb_per_s(size, result['source_sha_seconds']):.0f} MB/s"
        )
    THROUGHPUT_TABLE.print_header()
    for result in results:
        size, target = result["size"], result["target"]
        best: dict[str, dict[str, Any]] = {}
        for run in result["runs"]:
            if run["name"] not in best or run["seconds"] < best[run["name"]]["seconds"]:
                best[run["name"]] = run
        for run in best.values():
            THROUGHPUT_TABLE.print_row(
                target, run["label"], mb_per_s(size, run["seconds"]), run["seconds"], run["cpu_seconds"]
            )
        for baseline in ("baseline", "baseline-serial"):
            if baseline in best:
                ratios = ", ".join(
                    f"{name} {best[baseline]['seconds'] / best[name]['seconds']:.2f}"
                    for name in ("project", "project-hooks")
                    if name in best
                )
                log(f"{target:<6} ratio project/{baseline} (MB/s over MB/s): {ratios}")
        paired_ratios_print(target, result["runs"])


def paired_ratios_print(target: str, runs: list[dict[str, Any]]) -> None:
    """The ratio to the 10-thread baseline within each run (its paths ran one after the
    other, so they shared the machine's load of the moment), and the median over runs:
    steadier than the best of each path on a busy machine."""
    seconds = {(run["run"], run["name"]): run["seconds"] for run in runs}
    numbers = sorted({run["run"] for run in runs})
    for name in ("project", "project-hooks"):
        paired = [
            seconds[number, "baseline"] / seconds[number, name]
            for number in numbers
            if (number, "baseline") in seconds and (number, name) in seconds
        ]
        if len(paired) > 1:
            each = " ".join(f"{value:.2f}" for value in paired)
            log(f"{target:<6} {name}/baseline run by run: {each}; median {statistics.median(paired):.2f}")


MEMORY_TABLE = Table(
    Column("store\n", 6, align="<"),
    Column("file\nMiB", 9),
    Column("job\n", 3),
    Column("idle\nchild", 7),
    Column("before\njob", 7),
    Column("peak\nVmHWM", 7),
    Column("peak\nsampled", 7),
    Column("growth\nMiB", 7),
    Column("growth/\nfile", 8),
    Column("growth/\npart", 8),
    Column("after\njob", 7),
    Column("job\nMB/s", 7, ".1f"),
)


def print_memory(results: list[dict[str, Any]]) -> None:
    MEMORY_TABLE.print_header()
    for result in results:
        for job in result["jobs"]:
            peak = max(job["peak_hwm"] or 0, job["peak_sampled"])
            growth = peak - job["idle_before"]
            MEMORY_TABLE.print_row(
                result["target"],
                mib(result["size"]),
                job["job"],
                mib(result["idle_child"]),
                mib(job["idle_before"]),
                mib(job["peak_hwm"]) if job["peak_hwm"] is not None else "n/a",
                mib(job["peak_sampled"]),
                mib(growth),
                f"{100 * growth / result['size']:.1f}%",
                f"{growth / result['part_bytes']:.2f}x",
                mib(job["idle_after"]),
                mb_per_s(result["size"], job["seconds"]),
            )


def environments(
    stack: ExitStack, var_dir: Path, targets: list[str]
) -> tuple[dict[str, dict[str, str]], S3Endpoint | None]:
    """The measurements' environments by storage, and the S3 endpoint if S3 is measured."""
    base_env = bench_env(stack, var_dir, broker_db=BROKER_DB)
    base_env.update(
        {
            "ORIGIN": "synthetic",
            "SYNTHETIC_RATE_BPS": "0",
            "JOB_SOFT_TIME_LIMIT_S": "3600",
            "JOB_MAX_ATTEMPTS": "1",
        }
    )
    s3 = stack.enter_context(s3_endpoint(bucket_prefix="downloads-bench")) if "s3" in targets else None
    return {"local": base_env, "s3": {**base_env, **(s3.env if s3 else {})}}, s3


def header_print(s3: S3Endpoint | None) -> None:
    import boto3
    import moto

    log(
        f"staging benchmark  {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; boto3 {boto3.__version__}; S3 "
        + (f"moto {moto.__version__} server {s3.endpoint_url}" if s3 and s3.server else "")
        + (f"configured endpoint {s3.endpoint_url}" if s3 and not s3.server else "")
    )


def throughput_run(
    args: argparse.Namespace, targets: list[str], envs: dict[str, dict[str, str]], tmp: Path
) -> list[dict[str, Any]]:
    log(f"\n== throughput: {args.size_mib} MiB synthetic file, best of {args.repeat} ==")
    throughput: list[dict[str, Any]] = []
    for target in targets:
        out = tmp / f"throughput-{target}.json"
        run_part(
            ["_throughput", target, "--size", str(args.size_mib * MIB), "--repeat", str(args.repeat),
             "--out", str(out)],
            envs[target],
        )  # fmt: skip
        throughput.append(json.loads(out.read_text()))
    first = throughput[0]
    log(
        f"\nthroughput, {args.size_mib} MiB, chunk {mib(first['chunk_bytes'])} MiB, "
        f"part {mib(first['part_bytes'])} MiB; MB = 10^6 bytes; CPU s = the benchmark process's "
        "CPU time (all its threads; not moto's)"
    )
    print_throughput(throughput)
    return throughput


def memory_run(
    args: argparse.Namespace, targets: list[str], envs: dict[str, dict[str, str]], tmp: Path
) -> list[dict[str, Any]]:
    memory_sizes = [int(value) * MIB for value in args.memory_mib.split(",") if value]
    log(f"\n== memory: Celery worker (prefork, -c 1), {args.memory_jobs} job(s) per file size ==")
    (tmp / "logs").mkdir()
    memory: list[dict[str, Any]] = []
    for target in targets:
        out = tmp / f"memory-{target}.json"
        run_part(
            ["_memory", target, "--sizes", ",".join(map(str, memory_sizes)),
             "--jobs", str(args.memory_jobs), "--out", str(out), "--log-dir", str(tmp / "logs")],
            envs[target],
        )  # fmt: skip
        memory += json.loads(out.read_text())
    log(
        f"\nmemory: RSS (MiB) of the pool child that ran the job, chunk "
        f"{mib(memory[0]['chunk_bytes'])} MiB, part {mib(memory[0]['part_bytes'])} MiB. "
        "One fresh worker per file size; job 1 is its "
        "first (cold: imports, boto3 client), later jobs warm. growth = max(VmHWM, 50 ms samples) "
        "- RSS just before the job"
    )
    print_memory(memory)
    return memory


def driver_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    targets = [target for target in args.storage.split(",") if target]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-staging-")))
        envs, s3 = environments(stack, tmp / "var", targets)
        header_print(s3)
        throughput = [] if args.skip_throughput else throughput_run(args, targets, envs, tmp)
        memory = [] if args.skip_memory else memory_run(args, targets, envs, tmp)
        if s3 is not None and s3.server is not None:
            hwm = vm_hwm(s3.server.pid)
            if hwm is not None:
                log(f"\nmoto server peak RSS (VmHWM): {mib(hwm)} MiB")
        elapsed = time.monotonic() - started
        log(
            f"\nbenchmark wall time: {elapsed:.0f} s ({elapsed / 60:.1f} min); "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        if args.save:
            results_save("staging", {"throughput": throughput, "memory": memory, "wall_s": elapsed})
    return 0


def main(argv: list[str]) -> None:
    # A measurement subprocess (`_throughput`, `_memory`) exits quietly when interrupted: the
    # driver says it.
    run_until_interrupted(lambda: run(argv), announce=not argv or not argv[0].startswith("_"))


def run(argv: list[str]) -> int:
    if argv and argv[0] == "_throughput":
        parser = argparse.ArgumentParser(prog="staging.py _throughput")
        parser.add_argument("target", choices=TARGETS)
        parser.add_argument("--size", type=int, required=True)
        parser.add_argument("--repeat", type=int, default=1)
        parser.add_argument("--out", type=Path, required=True)
        sub = parser.parse_args(argv[1:])
        throughput_main(sub.target, sub.size, sub.repeat, sub.out)
        return 0
    if argv and argv[0] == "_memory":
        parser = argparse.ArgumentParser(prog="staging.py _memory")
        parser.add_argument("target", choices=TARGETS)
        parser.add_argument("--sizes", required=True)
        parser.add_argument("--jobs", type=int, default=2)
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--log-dir", type=Path, required=True)
        sub = parser.parse_args(argv[1:])
        sizes = [int(value) for value in sub.sizes.split(",")]
        memory_main(sub.target, sizes, sub.jobs, sub.out, sub.log_dir)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="throughput file size (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per path; the best counts")
    parser.add_argument(
        "--memory-mib", default="100,1024", help="file sizes of the memory runs (default 100,1024)"
    )
    parser.add_argument("--memory-jobs", type=int, default=2, help="jobs per worker and size (default 2)")
    parser.add_argument("--storage", default="s3,local", help="s3,local (default both)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/*.json"
    )
    args = parser.parse_args(argv)
    if any(target not in TARGETS for target in args.storage.split(",")):
        parser.error("--storage takes s3, local or s3,local")
    return driver_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
