"""Staging benchmark: throughput of `jobs.transfer.staging.stage_file` against plain baselines, and
the peak memory of a real Celery worker staging one job. Prints figures; asserts nothing.

    make bench                                   # = python -m downloads_project.embedded \\
                                                 #     .venv/bin/python bench/staging.py
    .venv/bin/python -m downloads_project.embedded .venv/bin/python bench/staging.py \\
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sandbox import bench_env, install_signal_handlers, interrupted, results_save  # noqa: E402
from devtools.servers import s3_endpoint  # noqa: E402
from downloads_project import processes  # noqa: E402
from jobs.queues import QUEUES  # noqa: E402

MIB = 1024 * 1024
MB = 1_000_000
BROKER_DB = 9  # a Redis database of the benchmark's own, so no other worker takes its jobs
FILE_ID = 424242
TARGETS = ("s3", "local")


# --- small helpers --------------------------------------------------------------------------


def stop_process_tree(process: subprocess.Popen[Any], *, graceful_s: float) -> None:
    """Stops a child started with `start_new_session=True` and whatever it forked: SIGTERM
    to its process group (SIGKILL when `graceful_s` is 0, or after `graceful_s`)."""
    try:
        forked = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        forked = []
    if process.poll() is None:
        # The leader is alive (not reaped), so its process group is still ours to signal.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM if graceful_s > 0 else signal.SIGKILL)
        try:
            process.wait(timeout=graceful_s if graceful_s > 0 else 10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for child in forked:  # psutil checks the identity, so a reused pid is never hit
        with suppress(psutil.NoSuchProcess):
            child.kill()


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / MB if seconds > 0 else float("nan")


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def log(message: str) -> None:
    print(message, flush=True)


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
    import django

    django.setup()


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


class ChunkStream:
    """A read-only, non-seekable file over an iterator of chunks. `read(n)` returns n bytes
    until the end (s3transfer takes a short read for a part)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = bytearray()
        self.done = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.pending) < size):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.done = True
            else:
                self.pending += chunk
        if size < 0 or size >= len(self.pending):
            data = bytes(self.pending)
            self.pending.clear()
        else:
            with memoryview(self.pending) as view:
                data = bytes(view[:size])
            del self.pending[:size]
        return data


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


def timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = action()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def throughput_main(target: str, size: int, repeat: int, out: Path) -> None:
    django_setup()
    from boto3.s3.transfer import TransferConfig
    from django.conf import settings
    from django.contrib.auth.models import User
    from storages.backends.s3 import S3Storage

    from jobs.models import DownloadJob
    from jobs.services import download_job_complete, download_job_start
    from jobs.services.progress import AttemptHooks
    from jobs.transfer.origins import SyntheticOrigin, synthetic_chunks
    from jobs.transfer.staging import NoHooks, StagedFile, StagingHooks, stage_file
    from jobs.transfer.storage import SignedFileSystemStorage, downloads_storage, stored_file_delete

    storage = downloads_storage()
    expected = S3Storage if target == "s3" else SignedFileSystemStorage
    if not isinstance(storage, expected):
        raise RuntimeError(f"settings chose {type(storage).__name__}, not {expected.__name__}")
    chunk_bytes, part_bytes = settings.STAGING_CHUNK_BYTES, settings.STAGING_PART_BYTES
    result = ThroughputResult(target=target, size=size, chunk_bytes=chunk_bytes, part_bytes=part_bytes)

    def chunks() -> Iterator[bytes]:
        return synthetic_chunks(FILE_ID, size, chunk_bytes)

    # The origin side alone: what the synthetic bytes (and their sha256) cost this CPU.
    def drain() -> None:
        for _ in chunks():
            pass

    def digest() -> str:
        sha = hashlib.sha256()
        for chunk in chunks():
            sha.update(chunk)
        return sha.hexdigest()

    _, result.source_seconds, _ = timed(drain)
    sha256, result.source_sha_seconds, _ = timed(digest)

    Prepared = tuple[Callable[[], object], Callable[[], None]]  # (timed action, check + clean up)

    def project(hooks_kind: str, key: str) -> Prepared:
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
            origin = SyntheticOrigin(size_bytes=size, rate_bps=0)
            staged.append(stage_file(origin=origin, file_id=FILE_ID, key=key, hooks=hooks))

        def check() -> None:
            if staged[0].size != size or staged[0].sha256 != sha256:
                raise RuntimeError(f"staged {staged[0]} is not the synthetic file")
            if job is not None:
                download_job_complete(job=job, attempt=job.attempts, staged=staged[0])
            stored_file_delete(staged[0].key)

        return action, check

    plans: list[tuple[str, str, Callable[[str], Prepared]]] = []
    if isinstance(storage, S3Storage):
        client = storage.connection.meta.client  # the project's own client: same endpoint, config
        bucket = storage.bucket_name

        def upload_fileobj(config: Any) -> Callable[[str], Prepared]:
            def prepare(key: str) -> Prepared:
                name = storage._normalize_name(key)

                def action() -> None:
                    client.upload_fileobj(ChunkStream(chunks()), bucket, name, Config=config)

                def check() -> None:
                    length = client.head_object(Bucket=bucket, Key=name)["ContentLength"]
                    client.delete_object(Bucket=bucket, Key=name)
                    if length != size:
                        raise RuntimeError(f"uploaded {length} bytes, not {size}")

                return action, check

            return prepare

        plans += [
            (
                "baseline",
                "baseline: boto3 upload_fileobj, default 10 threads",
                upload_fileobj(
                    TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)
                ),
            ),
            (
                "baseline-serial",
                "baseline: boto3 upload_fileobj, 1 thread",
                upload_fileobj(
                    TransferConfig(
                        multipart_threshold=part_bytes, multipart_chunksize=part_bytes, use_threads=False
                    )
                ),
            ),
        ]
    else:

        def plain_write(key: str, *, with_sha256: bool = False) -> Prepared:
            path = Path(storage.path(key))
            path.parent.mkdir(parents=True, exist_ok=True)

            def action() -> None:
                sha = hashlib.sha256()
                with path.open("wb") as handle:
                    for chunk in chunks():
                        if with_sha256:
                            sha.update(chunk)
                        handle.write(chunk)

            def check() -> None:
                length = path.stat().st_size
                path.unlink()
                if length != size:
                    raise RuntimeError(f"wrote {length} bytes, not {size}")

            return action, check

        plans += [
            ("baseline", "baseline: plain open('wb').write of the chunks", plain_write),
            (
                "reference-sha256",
                "reference: plain write + sha256 of the chunks",
                lambda key: plain_write(key, with_sha256=True),
            ),
        ]
    plans += [
        ("project", "project: stage_file, no-op hooks", lambda key: project("noop", key)),
        ("project-hooks", "project: stage_file, real AttemptHooks", lambda key: project("real", key)),
    ]

    for run in range(1, repeat + 1):
        for name, label, prepare in plans:
            key = f"bench/{target}/{name}-{run}.bin"
            action, check = prepare(key)
            _, seconds, cpu_seconds = timed(action)
            check()
            result.runs.append(Run(name, label, run, seconds, cpu_seconds))
            log(f"  [{target}] run {run}: {label}: {seconds:.1f} s, {mb_per_s(size, seconds):.1f} MB/s")
    out.write_text(json.dumps(asdict(result)))


# --- memory (a subprocess: `staging.py _memory`) --------------------------------------------


class TreeSampler:
    """Samples the RSS of a process's children every `interval_s` and keeps each one's peak."""

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peaks: dict[int, int] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

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

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval_s)

    def __enter__(self) -> "TreeSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
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


class Worker:
    """`celery -A downloads_project worker -c 1 --pool prefork`, in a session of its own."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str) -> None:
        self.env = env
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                processes.worker_argv(
                    concurrency=1,
                    name=f"{self.name}@%h",
                    extra=("--without-gossip", "--without-mingle", "--without-heartbeat"),
                ),
                env=self.env,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while " ready." not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, graceful: bool) -> None:
        if self.process is not None:
            stop_process_tree(self.process, graceful_s=15 if graceful else 0)


def memory_main(target: str, sizes: list[int], jobs: int, out: Path, log_dir: Path) -> None:
    django_setup()
    from django.conf import settings
    from django.contrib.auth.models import User

    from downloads_project.celery import app
    from jobs.models import TERMINAL_STATUSES, DownloadJob, Status
    from jobs.services import download_job_create
    from jobs.transfer.storage import stored_file_delete

    # Messages left in the benchmark's broker database by an interrupted run would name
    # rows of a database that is gone (or, worse, rows of this one).
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for queue in QUEUES:
            channel.queue_purge(queue)

    owner, _ = User.objects.get_or_create(username=f"bench-memory-{target}")
    created: list[DownloadJob] = []
    results: list[MemoryResult] = []
    worker: Worker | None = None
    graceful = False
    try:
        for size in sizes:
            env = {**os.environ, "SYNTHETIC_FILE_BYTES": str(size)}
            worker = Worker(env, log_dir / f"worker-{target}-{size}.log", f"bench-{target}-{size}")
            worker.start()
            assert worker.process is not None
            sampler_root = worker.process.pid
            time.sleep(1.0)  # let the pool child settle
            probe = TreeSampler(sampler_root)
            probe.sample()
            if len(probe.peaks) != 1:
                raise RuntimeError(f"expected one pool child, found {sorted(probe.peaks)}")
            child_pid = next(iter(probe.peaks))
            result = MemoryResult(
                target=target,
                size=size,
                chunk_bytes=settings.STAGING_CHUNK_BYTES,
                part_bytes=settings.STAGING_PART_BYTES,
                idle_child=probe.peaks[child_pid],
            )
            for number in range(1, jobs + 1):
                idle_probe = TreeSampler(sampler_root)
                idle_probe.sample()
                idle_before = idle_probe.peaks.get(child_pid, 0)
                hwm_reset = vm_hwm_reset(child_pid)
                with TreeSampler(sampler_root) as sampler:
                    job, _ = download_job_create(owner=owner, file_id=FILE_ID + number)
                    created.append(job)
                    deadline = time.monotonic() + 3600
                    while job.status not in TERMINAL_STATUSES:
                        if worker.process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the worker stopped or timed out:\n{worker.log_tail()}")
                        time.sleep(0.1)
                        job.refresh_from_db()
                if job.status != Status.COMPLETED or job.file_size_bytes != size:
                    raise RuntimeError(
                        f"{job.job_id} ended {job.status} {job.error_code} {job.error_message}"
                    )
                if set(sampler.peaks) != {child_pid}:
                    raise RuntimeError(f"the pool changed during the job: {sorted(sampler.peaks)}")
                time.sleep(0.5)
                after = TreeSampler(sampler_root)
                after.sample()
                hwm = vm_hwm(child_pid)
                result.jobs.append(
                    JobMemory(
                        job=number,
                        child_pid=child_pid,
                        idle_before=idle_before,
                        # Without a reset, VmHWM also holds earlier jobs' peaks.
                        peak_hwm=hwm if (hwm_reset or number == 1) else None,
                        peak_sampled=sampler.peaks[child_pid],
                        idle_after=after.peaks.get(child_pid, 0),
                        seconds=job.duration_seconds or 0.0,
                    )
                )
                stored_file_delete(job.storage_key)
                log(
                    f"  [{target}] {mib(size)} MiB job {number}: {job.duration_seconds:.1f} s, "
                    f"pool child peak {mib(max(hwm or 0, sampler.peaks[child_pid]))} MiB"
                )
            results.append(result)
            worker.stop(graceful=True)
            worker = None
        graceful = True
    finally:
        if worker is not None:
            worker.stop(graceful=graceful)
        # Whatever stopped us, leave no file or unfinished upload behind.
        for job in created:
            job.refresh_from_db()
            try:
                stored_file_delete(job.storage_key, upload_id=job.upload_id)
            except Exception as exc:
                log(f"  could not clean up {job.storage_key}: {exc}")
    out.write_text(json.dumps([asdict(result) for result in results]))


# --- the driver -------------------------------------------------------------------------------


def run_part(argv: list[str], env: dict[str, str]) -> None:
    """Runs one measurement subprocess. Ctrl-C reaches it from the terminal too; SIGTERM
    is passed on; either way it is waited for, so it can clean up (then killed)."""
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], env=env, cwd=ROOT)
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


def print_throughput(results: list[dict[str, Any]]) -> None:
    for result in results:
        size = result["size"]
        log(
            f"{result['target']:<6} origin side alone: synthetic_chunks "
            f"{mb_per_s(size, result['source_seconds']):.0f} MB/s, with sha256 "
            f"{mb_per_s(size, result['source_sha_seconds']):.0f} MB/s"
        )
    log(f"{'store':<6} {'path':<48} {'MB/s':>8} {'wall s':>7} {'CPU s':>6}")
    for result in results:
        size, target = result["size"], result["target"]
        best: dict[str, dict[str, Any]] = {}
        for run in result["runs"]:
            if run["name"] not in best or run["seconds"] < best[run["name"]]["seconds"]:
                best[run["name"]] = run
        for run in best.values():
            log(
                f"{target:<6} {run['label']:<48} {mb_per_s(size, run['seconds']):>8.1f} "
                f"{run['seconds']:>7.1f} {run['cpu_seconds']:>6.1f}"
            )
        for baseline in ("baseline", "baseline-serial"):
            if baseline in best:
                ratios = ", ".join(
                    f"{name} {best[baseline]['seconds'] / best[name]['seconds']:.2f}"
                    for name in ("project", "project-hooks")
                    if name in best
                )
                log(f"{target:<6} ratio project/{baseline} (MB/s over MB/s): {ratios}")


def print_memory(results: list[dict[str, Any]]) -> None:
    log(
        f"{'store':<6} {'file':>9} {'job':>3} {'idle':>7} {'before':>7} {'peak':>7} {'peak':>7} "
        f"{'growth':>7} {'growth/':>8} {'growth/':>8} {'after':>7} {'job':>7}"
    )
    log(
        f"{'':<6} {'MiB':>9} {'':>3} {'child':>7} {'job':>7} {'VmHWM':>7} {'sampled':>7} "
        f"{'MiB':>7} {'file':>8} {'part':>8} {'job':>7} {'MB/s':>7}"
    )
    for result in results:
        for job in result["jobs"]:
            peak = max(job["peak_hwm"] or 0, job["peak_sampled"])
            growth = peak - job["idle_before"]
            hwm = mib(job["peak_hwm"]) if job["peak_hwm"] is not None else "n/a"
            log(
                f"{result['target']:<6} {mib(result['size']):>9} {job['job']:>3} "
                f"{mib(result['idle_child']):>7} {mib(job['idle_before']):>7} {hwm:>7} "
                f"{mib(job['peak_sampled']):>7} {mib(growth):>7} "
                f"{100 * growth / result['size']:>7.1f}% {growth / result['part_bytes']:>7.2f}x "
                f"{mib(job['idle_after']):>7} {mb_per_s(result['size'], job['seconds']):>7.1f}"
            )


def driver_main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    size = args.size_mib * MIB
    memory_sizes = [int(value) * MIB for value in args.memory_mib.split(",") if value]
    targets = [target for target in args.storage.split(",") if target]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-staging-")))
        var_dir = tmp / "var"
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
        envs = {"local": base_env, "s3": {**base_env, **(s3.env if s3 else {})}}

        import boto3
        import moto

        log(
            f"staging benchmark  {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; boto3 {boto3.__version__}; S3 "
            + (f"moto {moto.__version__} server {s3.endpoint_url}" if s3 and s3.server else "")
            + (f"configured endpoint {s3.endpoint_url}" if s3 and not s3.server else "")
        )
        throughput: list[dict[str, Any]] = []
        if not args.skip_throughput:
            log(f"\n== throughput: {args.size_mib} MiB synthetic file, best of {args.repeat} ==")
            for target in targets:
                out = tmp / f"throughput-{target}.json"
                run_part(
                    [
                        "_throughput",
                        target,
                        "--size",
                        str(size),
                        "--repeat",
                        str(args.repeat),
                        "--out",
                        str(out),
                    ],
                    envs[target],
                )
                throughput.append(json.loads(out.read_text()))
            first = throughput[0]
            log(
                f"\nthroughput, {args.size_mib} MiB, chunk {mib(first['chunk_bytes'])} MiB, "
                f"part {mib(first['part_bytes'])} MiB; MB = 10^6 bytes; CPU s = the benchmark process's "
                "CPU time (all its threads; not moto's)"
            )
            print_throughput(throughput)
        memory: list[dict[str, Any]] = []
        if not args.skip_memory:
            log(f"\n== memory: Celery worker (prefork, -c 1), {args.memory_jobs} job(s) per file size ==")
            (tmp / "logs").mkdir()
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
            path = results_save("staging", {"throughput": throughput, "memory": memory, "wall_s": elapsed})
            log(f"results: {path.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    install_signal_handlers()
    try:
        run(argv)
    except KeyboardInterrupt:
        if not argv or not argv[0].startswith("_"):
            print("\ninterrupted; cleaned up", file=sys.stderr)
        raise SystemExit(130) from None


def run(argv: list[str]) -> None:
    if argv and argv[0] == "_throughput":
        parser = argparse.ArgumentParser(prog="staging.py _throughput")
        parser.add_argument("target", choices=TARGETS)
        parser.add_argument("--size", type=int, required=True)
        parser.add_argument("--repeat", type=int, default=1)
        parser.add_argument("--out", type=Path, required=True)
        sub = parser.parse_args(argv[1:])
        throughput_main(sub.target, sub.size, sub.repeat, sub.out)
        return
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
        return
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
    driver_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
