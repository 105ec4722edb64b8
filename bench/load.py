"""Load benchmark: the reference k6 load scenario (docs/operations.md, Load) replayed against the real
server and worker. Prints figures; exits 1 if any request got a 5xx or a transport error,
so that it doubles as a smoke check.

    .venv/bin/python -m bench.load                          # 50 users, 20 s / 60 s / 20 s (~2 min)
    .venv/bin/python -m bench.load --users 20 --ramp-up 10 --hold 30 --ramp-down 10
    .venv/bin/python -m bench.load --profile production --users 100 --ramp-up 10 --hold 30 \
        --ramp-down 10 --file-mib 0.25 --rate-mibps 0
    .venv/bin/python -m bench.load --url http://127.0.0.1:8000 --tokens-file tokens.txt

The reference scenario: virtual users (VUs) ramp up to 100 over 2 min, hold 5 min, ramp down
over 2 min; each VU loops: POST /v1/download/initiate {"file_id": 70000}, check 200 and
data.job_id, then every 2 s GET /v1/download/status/<job_id> until the job is completed or
failed. Here the VUs are asyncio tasks of this process (httpx.AsyncClient, one per VU, so
each keeps its own connections as a k6 VU does), and the durations are scaled down.

Without --url the script runs its own stack (bench/sandbox.py's bench_env: a throwaway
VAR_DIR with a migrated database, and a private Redis unless REDIS_URL is set): uvicorn
(--web-workers processes) and one Celery worker (--concurrency), with the
synthetic origin sized by --file-mib and --rate-mibps, and N users with an API key each, so
that the per-user limits (5 active jobs, the initiate rate) do not throttle the scenario.
All VUs come from 127.0.0.1, so the stack's initiate rates are raised (--initiate-rate,
--initiate-rate-per-ip). --profile embedded (the default) keeps the database in SQLite and
the files in local storage; --profile production uses a throwaway PostgreSQL database and S3
(a moto server of its own), and samples the stack's PostgreSQL connections. Everything is
stopped again at the end, also after Ctrl-C.

See bench/README.md.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import Column, Table, log, percentile, ratio, results_save
from bench.sandbox import (
    PgConnectionSampler,
    Stack,
    bench_env,
    django_setup,
    install_signal_handlers,
    process_tree_cpu_s,
    profile_parts,
    raised_open_file_limit,
    run_until_interrupted,
    tokens_create,
    var_dir_for,
    wait_ready,
)
from devtools.servers import free_port, wait_for_port
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

BROKER_DB = 8  # a broker database of its own (staging and realtime use 9)
REFERENCE_FILE_ID = 70000
TERMINAL = {"completed", "failed", "cancelled", "expired"}  # the reference scenario stops on the first two
STARTUP_TIMEOUT_S = 120
PG_DATABASE = "bench_load"  # the production profile's throwaway database


# --- setup (a subprocess with the stack's environment: `load.py _setup`) --------------------


def setup_main(users: int, out: Path) -> None:
    """N users with an API key each, and the limits in effect, as the web processes will
    read them."""
    django_setup()
    from django.conf import settings

    tokens = tokens_create(users, prefix="load")
    names = (
        "JOB_INITIATE_RATE",
        "JOB_INITIATE_RATE_PER_IP",
        "JOB_MAX_ACTIVE_PER_USER",
        "JOB_REUSE",
        "SYNTHETIC_FILE_BYTES",
        "SYNTHETIC_RATE_BPS",
        "STAGING_CHUNK_BYTES",
        "DATABASE_POOL_MAX_SIZE",  # PostgreSQL only
    )
    limits = {name: getattr(settings, name, "(not a setting)") for name in names}
    limits["DATABASE"] = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    out.write_text(json.dumps({"tokens": tokens, "settings": limits}))


# --- the load: virtual users ---------------------------------------------------------------


@dataclass
class Sample:
    at_s: float  # since the load began, when the request was sent
    latency_ms: float | None  # None: transport error
    status: int | None = None


@dataclass
class Job:
    job_id: str
    file_id: int
    initiated_at_s: float  # when the initiate request was sent
    first_processing_at_s: float | None = None
    ended_at_s: float | None = None  # the poll that first saw a terminal status answered
    outcome: str = "active"  # a terminal status, "active" (given up at the end) or "lost" (404)


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(
        default_factory=lambda: {"initiate": [], "status": [], "health": []}
    )
    errors: Counter[str] = field(default_factory=Counter)  # transport error kinds
    bad_bodies: int = 0  # initiate 200 without data.job_id
    jobs: list[Job] = field(default_factory=list)
    iterations: int = 0
    peak_vus: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    loop_lag_ms: list[float] = field(default_factory=list)
    interrupted: bool = False


class Load:
    def __init__(self, args: argparse.Namespace, base_url: str, tokens: list[str]) -> None:
        self.args = args
        self.base_url = base_url
        self.tokens = tokens
        self.results = Results()
        self.started = 0.0
        self.file_ids = iter(range(REFERENCE_FILE_ID, 2**62))
        self.active_vus = 0
        self.stopping = asyncio.Event()  # Ctrl-C: every VU stops at once

    def now(self) -> float:
        return time.monotonic() - self.started

    async def request(
        self, client: httpx.AsyncClient, endpoint: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        at = self.now()
        began = time.perf_counter()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.results.samples[endpoint].append(Sample(at, None))
            self.results.errors[f"{endpoint}: {type(exc).__name__}"] += 1
            return None
        latency = (time.perf_counter() - began) * 1000
        self.results.samples[endpoint].append(Sample(at, latency, response.status_code))
        return response

    async def sleep(self, seconds: float) -> bool:
        """Sleeps; False if Ctrl-C came meanwhile."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.0, seconds))
        return not self.stopping.is_set()

    async def health_probe(self, client: httpx.AsyncClient, delay_s: float) -> None:
        if await self.sleep(delay_s):
            await self.request(client, "health", "GET", "/health")

    def file_id(self) -> int:
        return next(self.file_ids) if self.args.file_id_mode == "distinct" else REFERENCE_FILE_ID

    async def vu(self, index: int, start_s: float, stop_s: float) -> None:
        """One virtual user: from start_s it loops the reference scenario's iteration; it starts none
        after stop_s, and abandons a job still polled at stop_s + graceful stop."""
        args = self.args
        if not await self.sleep(start_s - self.now()):
            return
        self.active_vus += 1
        self.results.peak_vus = max(self.results.peak_vus, self.active_vus)
        probes: set[asyncio.Task[None]] = set()
        headers = {"Authorization": f"Token {self.tokens[index]}"}
        timeout = httpx.Timeout(args.timeout)
        try:
            async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout) as client:
                while self.now() < stop_s and not self.stopping.is_set():
                    self.results.iterations += 1
                    await self.iteration(client, probes, stop_s + args.graceful_stop)
                if probes:
                    await asyncio.gather(*probes, return_exceptions=True)
        finally:
            self.active_vus -= 1

    async def iteration(
        self, client: httpx.AsyncClient, probes: set[asyncio.Task[None]], give_up_s: float
    ) -> None:
        interval = self.args.poll_interval
        file_id = self.file_id()
        initiated_at = self.now()
        response = await self.request(
            client, "initiate", "POST", "/v1/download/initiate", json={"file_id": file_id}
        )
        job_id = None
        if response is not None and response.status_code == 200:
            with suppress(ValueError, AttributeError, TypeError):
                job_id = response.json()["data"]["job_id"]
            if not job_id:
                self.results.bad_bodies += 1
        if not job_id:
            # The reference k6 script would poll /status/undefined for ever; this VU waits one
            # interval and starts its next iteration instead.
            await self.sleep(interval)
            return
        job = Job(job_id=job_id, file_id=file_id, initiated_at_s=initiated_at)
        self.results.jobs.append(job)
        while True:
            if not self.args.no_baseline:
                # One GET /health per poll, at a random moment between two polls, over the
                # same client: the same concurrency and the same client loop.
                probe = asyncio.create_task(self.health_probe(client, random.uniform(0.1, interval - 0.1)))
                probes.add(probe)
                probe.add_done_callback(probes.discard)
            if not await self.sleep(interval) or self.now() >= give_up_s:
                return  # job.outcome stays "active"
            response = await self.request(client, "status", "GET", f"/v1/download/status/{job_id}")
            if response is None or response.status_code != 200:
                if response is not None and response.status_code == 404:
                    job.outcome = "lost"
                    return
                continue  # a 5xx or a transport error: poll again
            with suppress(ValueError, AttributeError, TypeError, KeyError):
                status = response.json()["data"]["status"]
                if status != "queued" and job.first_processing_at_s is None:
                    job.first_processing_at_s = self.now()
                if status in TERMINAL:
                    job.outcome, job.ended_at_s = status, self.now()
                    return

    async def loop_lag(self) -> None:
        """How late this process's event loop wakes up: the client's own share of every latency."""
        while not self.stopping.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.1)
            self.results.loop_lag_ms.append((time.perf_counter() - began - 0.1) * 1000)

    async def run(self) -> Results:
        args = self.args
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            self.results.interrupted = True
            self.stopping.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
        n = args.users
        ramp_end, hold_end = args.ramp_up, args.ramp_up + args.hold
        # As k6's ramping-vus: linear ramps; VU i starts when the target passes i, and the
        # last started stops first while the target falls.
        schedule = [(args.ramp_up * i / n, hold_end + args.ramp_down * (1 - i / n)) for i in range(n)]
        cpu = time.process_time()
        self.started = time.monotonic()
        lag = asyncio.create_task(self.loop_lag())
        progress = asyncio.create_task(self.progress(ramp_end, hold_end))
        try:
            await asyncio.gather(*(self.vu(i, start, stop) for i, (start, stop) in enumerate(schedule)))
        finally:
            self.results.wall_s = self.now()
            self.results.client_cpu_s = time.process_time() - cpu
            self.stopping.set()
            progress.cancel()
            await asyncio.gather(lag, progress, return_exceptions=True)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return self.results

    async def progress(self, ramp_end: float, hold_end: float) -> None:
        """A line every 10 s, so a long run shows it is alive."""
        while True:
            await asyncio.sleep(10)
            jobs = self.results.jobs
            done = sum(1 for job in jobs if job.outcome != "active")
            phase = "ramp-up" if self.now() < ramp_end else "hold" if self.now() < hold_end else "ramp-down"
            fails = sum(
                1
                for samples in self.results.samples.values()
                for sample in samples
                if sample.status is None or sample.status >= 500
            )
            log(
                f"  t={self.now():5.0f} s  {phase:<9} VUs {self.active_vus:>3}  jobs initiated "
                f"{len(jobs):>4}, ended {done:>4}  5xx+transport errors {fails}"
            )


# --- the report --------------------------------------------------------------------------------


@dataclass
class EndpointFigures:
    count: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float
    non_2xx: dict[int, int]
    server_errors: int
    transport_errors: int


def endpoint_figures(samples: list[Sample], wall_s: float) -> EndpointFigures:
    latencies = sorted(sample.latency_ms for sample in samples if sample.latency_ms is not None)
    codes = Counter(
        sample.status for sample in samples if sample.status is not None and not 200 <= sample.status < 300
    )
    return EndpointFigures(
        count=len(samples),
        rps=len(samples) / wall_s if wall_s else float("nan"),
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        max=percentile(latencies, 100),
        non_2xx=dict(sorted(codes.items())),
        server_errors=sum(count for code, count in codes.items() if code >= 500),
        transport_errors=sum(1 for sample in samples if sample.status is None),
    )


ENDPOINTS_TABLE = Table(
    Column("endpoint", 10, align="<"),
    Column("count", 6),
    Column("req/s", 7, ".2f"),
    *(Column(name, 8, ".1f") for name in ("p50", "p95", "p99", "max", "hold p50", "p99")),
    Column("5xx", 5),
    Column("transport", 9),
    Column("non-2xx by code", align="<", before="  "),
)


def report(
    results: Results, args: argparse.Namespace, header: list[str], cpu_lines: list[str]
) -> tuple[dict[str, Any], bool]:
    """Prints the figures; returns them (for the JSON file) and whether the run is clean."""
    banner_print(header)
    figures = {name: endpoint_figures(samples, results.wall_s) for name, samples in results.samples.items()}
    endpoints_print(results, figures, args)
    slowest_print(results)
    overall_print(results, figures)
    baseline_print(figures)
    outcomes = jobs_print(results, figures)
    ended, started = job_durations(results)
    job_durations_print(ended, started, args)
    client_print(results)
    for line in cpu_lines:
        log(line)
    clean = result_print(figures)
    summary = {
        "endpoints": {
            name: vars(fig) | {"non_2xx": {str(k): v for k, v in fig.non_2xx.items()}}
            for name, fig in figures.items()
        },
        "jobs": dict(outcomes) | {"initiated": len(results.jobs)},
        "job_e2e_p50_s": percentile(ended, 50),
        "job_e2e_p95_s": percentile(ended, 95),
        "wall_s": results.wall_s,
        "interrupted": results.interrupted,
        "clean": clean,
    }
    return summary, clean


def banner_print(header: list[str]) -> None:
    log("\n" + "=" * 100)
    for line in header:
        log(line)
    log("=" * 100)


def hold_latencies(results: Results, args: argparse.Namespace) -> dict[str, list[float]]:
    """Each endpoint's latencies of the requests sent during the hold, sorted."""
    hold_start, hold_end = args.ramp_up, args.ramp_up + args.hold
    return {
        name: sorted(
            sample.latency_ms
            for sample in samples
            if sample.latency_ms is not None and hold_start <= sample.at_s < hold_end
        )
        for name, samples in results.samples.items()
    }


def endpoints_print(results: Results, figures: dict[str, EndpointFigures], args: argparse.Namespace) -> None:
    hold = hold_latencies(results, args)
    log(
        f"\nrequests over the load phase ({results.wall_s:.1f} s"
        f"{', INTERRUPTED' if results.interrupted else ''}); latency in ms, from send to the whole body read"
    )
    ENDPOINTS_TABLE.print_header()
    for name in ("initiate", "status", "health"):
        fig = figures[name]
        if name == "health" and not fig.count:
            continue
        codes = ", ".join(f"{code}: {count}" for code, count in fig.non_2xx.items()) or "-"
        ENDPOINTS_TABLE.print_row(
            name,
            fig.count,
            fig.rps,
            fig.p50,
            fig.p95,
            fig.p99,
            fig.max,
            percentile(hold[name], 50),
            percentile(hold[name], 99),
            fig.server_errors,
            fig.transport_errors,
            codes,
        )


def slowest_print(results: Results) -> None:
    """The three slowest requests of each endpoint, and when they were sent."""
    slowest = {
        name: sorted(
            (sample for sample in samples if sample.latency_ms is not None),
            key=lambda sample: -(sample.latency_ms or 0.0),
        )[:3]
        for name, samples in results.samples.items()
    }
    log(
        "slowest (ms at t s): "
        + "; ".join(
            f"{name} " + ", ".join(f"{sample.latency_ms:.0f} at {sample.at_s:.0f}" for sample in worst)
            for name, worst in slowest.items()
            if worst
        )
    )


def overall_print(results: Results, figures: dict[str, EndpointFigures]) -> None:
    wall = results.wall_s
    total = sum(fig.count for fig in figures.values())
    scenario = figures["initiate"].count + figures["status"].count
    log(
        f"overall: {total / wall if wall else float('nan'):.2f} req/s ({total} requests; the scenario's own "
        f"initiate + status: {scenario / wall if wall else float('nan'):.2f} req/s); iterations "
        f"{results.iterations}; peak VUs {results.peak_vus}"
    )
    if results.errors:
        log("transport errors: " + ", ".join(f"{kind} x{count}" for kind, count in results.errors.items()))


def baseline_print(figures: dict[str, EndpointFigures]) -> None:
    """The scenario's endpoints against GET /health, if it ran."""
    health = figures["health"]
    if not health.count:
        return
    log(
        "\nbaseline: GET /health (answers without touching anything), one per poll at a random moment, "
        "same clients and concurrency"
    )
    for name in ("initiate", "status"):
        fig = figures[name]
        log(
            f"  {name:<8} / health: p50 {ratio(fig.p50, health.p50):6.1f}x   p99 "
            f"{ratio(fig.p99, health.p99):6.1f}x"
        )


def jobs_print(results: Results, figures: dict[str, EndpointFigures]) -> Counter[str]:
    """The reference scenario's checks and the jobs' outcomes, which it returns."""
    initiate_ok = sum(1 for sample in results.samples["initiate"] if sample.status == 200)
    log(
        f"\nchecks (as the reference scenario's): status is 200: {initiate_ok}/{figures['initiate'].count}; "
        f"has job_id: {len(results.jobs)}/{figures['initiate'].count}"
        + (f" ({results.bad_bodies} 200s without a job_id)" if results.bad_bodies else "")
    )
    outcomes = Counter(job.outcome for job in results.jobs)
    log(
        f"jobs: initiated {len(results.jobs)}, completed {outcomes['completed']}, "
        f"failed {outcomes['failed']}, still active when their VU stopped polling {outcomes['active']}"
        + "".join(
            f", {name} {count}"
            for name, count in sorted(outcomes.items())
            if name not in {"completed", "failed", "active"}
        )
    )
    return outcomes


def job_durations(results: Results) -> tuple[list[float], list[float]]:
    """The completed jobs' end-to-end times and the jobs' waits (until a poll saw them
    past queued), sorted."""
    ended = sorted(
        job.ended_at_s - job.initiated_at_s
        for job in results.jobs
        if job.ended_at_s is not None and job.outcome == "completed"
    )
    started = sorted(
        job.first_processing_at_s - job.initiated_at_s
        for job in results.jobs
        if job.first_processing_at_s is not None
    )
    return ended, started


def job_durations_print(ended: list[float], started: list[float], args: argparse.Namespace) -> None:
    log(
        "job end to end (initiate sent -> the poll that saw it completed), s: "
        f"p50 {percentile(ended, 50):.1f}, "
        f"p95 {percentile(ended, 95):.1f}, max {percentile(ended, 100):.1f}  "
        f"(resolution: the {args.poll_interval:g} s poll interval)"
    )
    log(
        "job wait (initiate sent -> first poll that saw it past queued), s: "
        f"p50 {percentile(started, 50):.1f}, "
        f"p95 {percentile(started, 95):.1f}, max {percentile(started, 100):.1f}"
    )


def client_print(results: Results) -> None:
    wall = results.wall_s
    lag = sorted(results.loop_lag_ms)
    client_load = results.client_cpu_s / wall if wall else 0.0
    log(
        f"\nclient: CPU {results.client_cpu_s:.1f} s over {wall:.0f} s ({client_load:.2f} "
        f"of a core); event-loop lag p50 {percentile(lag, 50):.1f} ms, p99 {percentile(lag, 99):.1f} ms, "
        f"max {percentile(lag, 100):.1f} ms"
    )


def result_print(figures: dict[str, EndpointFigures]) -> bool:
    """The verdict: clean when no request got a 5xx or a transport error."""
    server_errors = sum(fig.server_errors for fig in figures.values())
    transport_errors = sum(fig.transport_errors for fig in figures.values())
    clean = server_errors == 0 and transport_errors == 0
    log(
        f"\nRESULT: {'OK' if clean else 'FAILED'}: {server_errors} 5xx, {transport_errors} transport error(s)"
        + ("" if clean else " (exit status 1)")
    )
    return clean


def metrics_lines(base_url: str) -> list[str]:
    """The server's own view of the jobs, from /metrics (the figures it reads from the
    database at scrape time, and the outcome counters of the worker processes)."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return [f"server /metrics: unavailable ({exc!r})"]
    active: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.match(r"download_jobs_active\{([^}]*)\} ([0-9.e+]+)", line)
        if match:
            status = re.search(r'status="([^"]*)"', match.group(1))
            active[status.group(1) if status else "?"] += int(float(match.group(2)))
        match = re.match(r"download_job_outcomes_total\{([^}]*)\} ([0-9.e+]+)", line)
        if match:
            outcome = re.search(r'outcome="([^"]*)"', match.group(1))
            outcomes[outcome.group(1) if outcome else "?"] += int(float(match.group(2)))
    return [
        "server /metrics after the load: jobs active "
        + (", ".join(f"{key} {value}" for key, value in sorted(active.items())) or "none")
        + "; attempt outcomes "
        + (", ".join(f"{key} {value}" for key, value in sorted(outcomes.items())) or "none")
    ]


# --- the driver --------------------------------------------------------------------------------


def read_tokens(path: Path) -> list[str]:
    text = path.read_text()
    if text.lstrip().startswith(("[", "{")):
        data = json.loads(text)
        tokens = data["tokens"] if isinstance(data, dict) else data
        return [str(token) for token in tokens]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def run_load(args: argparse.Namespace, base_url: str, tokens: list[str]) -> Results:
    return asyncio.run(Load(args, base_url, tokens).run())


def describe(args: argparse.Namespace) -> tuple[str, str]:
    """The scenario and the client host, as printed in the header."""
    mode_note = {
        "fixed": f"fixed (file_id {REFERENCE_FILE_ID} for every iteration, as the reference scenario)",
        "distinct": f"distinct (a fresh file_id per iteration, from {REFERENCE_FILE_ID} up)",
    }[args.file_id_mode]
    scenario = (
        f"scenario: {args.users} VUs (one user each); ramp-up {args.ramp_up:g} s, hold {args.hold:g} s, "
        f"ramp-down {args.ramp_down:g} s, graceful stop {args.graceful_stop:g} s; poll every "
        f"{args.poll_interval:g} s; file-id mode {mode_note}; baseline "
        f"{'off' if args.no_baseline else 'GET /health'}"
    )
    host = (
        f"client: Python {platform.python_version()}, httpx {httpx.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )
    return scenario, host


def exit_code(clean: bool, results: Results) -> int:
    return 0 if clean and not results.interrupted else (130 if clean else 1)


def driver_main(args: argparse.Namespace) -> int:
    scenario, host = describe(args)
    log(f"load: {scenario}")
    if args.url:
        return url_main(args, scenario, host)
    return own_stack_main(args, scenario, host)


def url_main(args: argparse.Namespace, scenario: str, host: str) -> int:
    """Against a running server: its limits, workers and origin are its own."""
    if not args.tokens_file:
        raise SystemExit("--url needs --tokens-file (one API key per line, one per VU)")
    tokens = read_tokens(args.tokens_file)
    if len(tokens) < args.users:
        raise SystemExit(
            f"{args.tokens_file} has {len(tokens)} tokens for {args.users} users: each VU needs its own "
            "user, or the per-user limits throttle the scenario"
        )
    base_url = args.url.rstrip("/")
    wait_ready(base_url, None, 30)
    if args.file_id_mode == "fixed":
        log(
            "note: with --file-id-mode fixed, a server reusing retained files (JOB_REUSE) "
            "stages each VU's first job only"
        )
    results = run_load(args, base_url, tokens)
    header = [
        f"load benchmark against {base_url} (a running server: its limits and workers are its own)",
        scenario,
        host,
    ]
    summary, clean = report(results, args, header, metrics_lines(base_url))
    save(args, summary | {"target": base_url})
    return exit_code(clean, results)


# --- the script's own stack, on a profile ------------------------------------------------------


@dataclass
class StackSetup:
    env: dict[str, str]
    tokens: list[str]
    effective: dict[str, Any]  # the settings as the service reads them (`setup_main`)
    parts: str  # database, Redis and storage, for the header


def stack_setup(stack: ExitStack, args: argparse.Namespace, var_dir: Path) -> StackSetup:
    """The stack's environment (migrated database, Redis, storage, origin, limits) and its
    users, created by `load.py _setup` in that environment."""
    redis = f"Redis {os.environ['REDIS_URL']}" if os.environ.get("REDIS_URL") else "a private Redis"
    database_url, storage_env, storage = profile_parts(
        stack, args.profile, database=PG_DATABASE, bucket_prefix="bench-load"
    )
    env = bench_env(stack, var_dir, broker_db=BROKER_DB, database_url=database_url) | storage_env
    env |= {
        "SYNTHETIC_FILE_BYTES": str(int(args.file_mib * 2**20)),
        "SYNTHETIC_RATE_BPS": str(int(args.rate_mibps * 2**20)),
        "JOB_INITIATE_RATE": args.initiate_rate,
        "JOB_INITIATE_RATE_PER_IP": args.initiate_rate_per_ip,
        "PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus"),
        "ORIGIN": "synthetic",
    }
    if args.job_reuse:
        env["JOB_REUSE"] = args.job_reuse
    (var_dir / "prometheus").mkdir(exist_ok=True)
    out = var_dir / "setup.json"
    argv = [sys.executable, "-m", "bench.load", "_setup", "--users", str(args.users)]
    subprocess.run([*argv, "--out", str(out)], env=env, cwd=ROOT, check=True)
    setup = json.loads(out.read_text())
    (var_dir / "tokens.txt").write_text("\n".join(setup["tokens"]) + "\n")
    effective = setup["settings"]
    database = effective["DATABASE"]
    if args.profile == "production":
        database += f" database {PG_DATABASE} (web: pool of at most {effective['DATABASE_POOL_MAX_SIZE']})"
    return StackSetup(env, setup["tokens"], effective, f"{database}, {redis}, {storage}")


def start_servers(stack: ExitStack, args: argparse.Namespace, setup: StackSetup, log_dir: Path) -> Stack:
    servers = Stack(setup.env, log_dir, application_prefix="bench-load")
    stack.callback(servers.stop_all)
    port = free_port()
    web = servers.start(
        "web",
        processes.web_argv(
            port=port, extra=("--workers", str(args.web_workers), "--no-access-log", "--log-level", "warning")
        ),
    )
    servers.start(
        "worker",
        processes.worker_argv(
            concurrency=args.concurrency,
            name=f"bench-load-{os.getpid()}@%h",
            extra=("--without-gossip", "--without-mingle"),
        ),
    )
    wait_for_port(port, timeout_s=STARTUP_TIMEOUT_S, process=web)
    servers.base_url = f"http://127.0.0.1:{port}"
    return servers


def stack_lines(args: argparse.Namespace, setup: StackSetup) -> list[str]:
    """The profile and stack, and the limits in effect, for the header."""
    effective = setup.effective
    seconds = args.file_mib / args.rate_mibps if args.rate_mibps else 0.0
    return [
        f"profile {args.profile}: uvicorn x{args.web_workers} process(es), Celery worker --concurrency "
        f"{args.concurrency} (prefork), {setup.parts}; synthetic origin {args.file_mib:g} MiB at "
        f"{args.rate_mibps:g} MiB/s (~{seconds:.1f} s of transfer per job)",
        "limits in effect (the web processes' settings): "
        f"JOB_INITIATE_RATE {effective['JOB_INITIATE_RATE']}, "
        f"JOB_INITIATE_RATE_PER_IP {effective['JOB_INITIATE_RATE_PER_IP']}, JOB_MAX_ACTIVE_PER_USER "
        f"{effective['JOB_MAX_ACTIVE_PER_USER']}, JOB_REUSE {effective['JOB_REUSE']}",
    ]


def pg_bound(args: argparse.Namespace, setup: StackSetup) -> tuple[int, str]:
    """The most connections the stack may hold: each web process's pool, and the worker's
    (its threads borrow from a pool of the same size, so no more than its concurrency
    either; this script runs no beat, which would hold one more)."""
    pool = int(setup.effective["DATABASE_POOL_MAX_SIZE"])
    worker = min(args.concurrency, pool)
    bound = args.web_workers * pool + worker
    formula = (
        f"web processes {args.web_workers} x DATABASE_POOL_MAX_SIZE {pool} + the worker's pool, at most "
        f"its concurrency {args.concurrency}: {worker} (+ 0: no beat)"
    )
    return bound, formula


def server_lines(servers: Stack, cpu_before: dict[str, float], wall_s: float) -> list[str]:
    cpu = {name: process_tree_cpu_s(servers.process(name).pid) - cpu_before[name] for name in cpu_before}
    return [
        f"server: CPU over the load phase: web {cpu['web']:.1f} s ({cpu['web'] / wall_s:.2f} of a core), "
        f"worker {cpu['worker']:.1f} s ({cpu['worker'] / wall_s:.2f}); "
        f"load average now {os.getloadavg()[0]:.2f}",
        *metrics_lines(servers.base_url),
    ]


def run_on_stack(
    args: argparse.Namespace, servers: Stack, setup: StackSetup
) -> tuple[Results, list[str], dict[str, Any]]:
    """The load against the started stack, with the CPU of its processes and, on PostgreSQL,
    its connections sampled meanwhile: the results, the extra report lines and the figures."""
    cpu_before = {name: process_tree_cpu_s(servers.process(name).pid) for name in ("web", "worker")}
    sampler = None
    if args.profile == "production":
        sampler = PgConnectionSampler(setup.env["DATABASE_URL"], PG_DATABASE)
    with sampler or nullcontext():
        results = run_load(args, servers.base_url, setup.tokens)
    install_signal_handlers()  # asyncio.run's signal handlers are gone again
    lines = server_lines(servers, cpu_before, results.wall_s or 1.0)
    if sampler is None:
        return results, lines, {}
    bound, formula = pg_bound(args, setup)
    return results, [*lines, sampler.line(bound, formula)], sampler.figures(bound, formula)


def own_stack_main(args: argparse.Namespace, scenario: str, host: str) -> int:
    with ExitStack() as stack:
        var_dir = stack.enter_context(var_dir_for(args.var_dir, prefix="bench-load-"))
        log_dir = var_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log(f"load: setting up the {args.profile} stack in {var_dir} (logs in {log_dir})")
        setup = stack_setup(stack, args, var_dir)
        servers = start_servers(stack, args, setup, log_dir)
        ready = wait_ready(servers.base_url, servers, STARTUP_TIMEOUT_S)
        servers.wait_worker_ready("worker", STARTUP_TIMEOUT_S)
        header = stack_lines(args, setup)
        for line in header:
            log(f"load: {line}")
        log(f"load: ready ({', '.join(f'{k} {v}' for k, v in ready.get('checks', {}).items())}); running")
        if args.file_id_mode == "fixed" and setup.effective["JOB_REUSE"] != "off":
            log(
                f"note: --file-id-mode fixed with JOB_REUSE {setup.effective['JOB_REUSE']}: only each VU's "
                "first job stages; the rest reuse its retained file (--job-reuse off stages every one)"
            )
        results, extra_lines, pg = run_on_stack(args, servers, setup)
        servers.check_alive()
        title = "load benchmark (the reference k6 scenario, scaled down), own stack"
        summary, clean = report(results, args, [title, scenario, *header, host], extra_lines)
        servers.print_log_problems(failed=not clean)
        if not clean and args.var_dir is None:
            log(f"note: {var_dir} goes when the script ends; --var-dir DIR keeps the logs")
        save(args, summary | {"profile": args.profile, "stack": header[0], "limits": setup.effective} | pg)
        log("load: stopping the stack")
    return exit_code(clean, results)


def save(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if not args.save:
        return
    results_save("load", {"options": vars(args), **summary})


def main(argv: list[str]) -> None:
    if argv and argv[0] == "_setup":
        setup_command(argv[1:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scenario_options(parser)
    target = parser.add_argument_group("target: a running server")
    target.add_argument("--url", help="e.g. http://127.0.0.1:8000 (then no stack is started)")
    target.add_argument(
        "--tokens-file", type=Path, help="API keys, one per line (or a JSON list), one per VU"
    )
    stack_options(parser)
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/load-*.json"
    )
    args = parser.parse_args(argv)
    if args.users < 1 or args.poll_interval <= 0.2:
        parser.error("--users must be at least 1 and --poll-interval more than 0.2 s")
    # Many VUs hold sockets: raise the soft open-files limit (children inherit it).
    with raised_open_file_limit():
        run_until_interrupted(lambda: driver_main(args))


def setup_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="load.py _setup")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    setup_args = parser.parse_args(argv)
    setup_main(setup_args.users, setup_args.out)


def scenario_options(parser: argparse.ArgumentParser) -> None:
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument(
        "--users",
        type=int,
        default=50,
        help="virtual users at the hold (default 50; reference: 100)",
    )
    scenario.add_argument("--ramp-up", type=float, default=20.0, help="seconds (default 20; reference: 120)")
    scenario.add_argument("--hold", type=float, default=60.0, help="seconds (default 60; reference: 300)")
    scenario.add_argument(
        "--ramp-down", type=float, default=20.0, help="seconds (default 20; reference: 120)"
    )
    scenario.add_argument(
        "--graceful-stop",
        type=float,
        default=30.0,
        help="a stopping VU keeps polling its job this long before abandoning it "
        "(k6's gracefulRampDown; default 30)",
    )
    scenario.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between status polls (default 2)"
    )
    scenario.add_argument(
        "--file-id-mode",
        choices=("fixed", "distinct"),
        default="distinct",
        help=f"fixed: file_id {REFERENCE_FILE_ID} always, as the reference (a server that reuses a user's "
        "retained file then stages only each VU's first job); distinct: a fresh file_id per iteration "
        "(default)",
    )
    scenario.add_argument(
        "--timeout", type=float, default=30.0, help="per-request timeout, seconds (default 30)"
    )
    scenario.add_argument("--no-baseline", action="store_true", help="no GET /health probes")


def stack_options(parser: argparse.ArgumentParser) -> None:
    own = parser.add_argument_group("target: the script's own stack (without --url)")
    own.add_argument(
        "--profile",
        choices=("embedded", "production"),
        default="embedded",
        help="embedded: SQLite, a private Redis, local storage (default); production: a throwaway "
        f"PostgreSQL database {PG_DATABASE} on BENCH_POSTGRES_URL's server, Redis, S3 (a moto server "
        "of its own, unless AWS_S3_ENDPOINT_URL is set), with its connections sampled",
    )
    own.add_argument("--web-workers", type=int, default=1, help="uvicorn processes (default 1)")
    own.add_argument("--concurrency", type=int, default=4, help="Celery worker processes (default 4)")
    own.add_argument("--file-mib", type=float, default=4.0, help="synthetic file size, MiB (default 4)")
    own.add_argument(
        "--rate-mibps",
        type=float,
        default=1.0,
        help="synthetic origin rate, MiB/s; 0: unthrottled (default 1)",
    )
    own.add_argument(
        "--initiate-rate", default="100000/minute", help="JOB_INITIATE_RATE (per user; default 100000/minute)"
    )
    own.add_argument(
        "--initiate-rate-per-ip",
        default="100000/minute",
        help="JOB_INITIATE_RATE_PER_IP (every VU is 127.0.0.1; default 100000/minute)",
    )
    own.add_argument(
        "--job-reuse", choices=("off", "owner", "any"), help="JOB_REUSE (default: the service's)"
    )
    own.add_argument(
        "--var-dir",
        type=Path,
        help="keep the stack's VAR_DIR (database, logs, tokens.txt) here; default: a temporary one",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
