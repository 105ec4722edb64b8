"""Realtime benchmark: the delay from a worker-side publish to the WebSocket clients of a job,
for 1, 100 and 1,000 subscribers on one ASGI process, beside the channel layer's own delay.
Prints figures; asserts nothing.

    .venv/bin/python -m downloads_project.embedded .venv/bin/python bench/realtime.py
    .venv/bin/python -m downloads_project.embedded .venv/bin/python bench/realtime.py \\
        --subscribers 1,100 --events 50                # a quick run

Layout: this process (the driver) makes a throwaway VAR_DIR with a SQLite database,
migrates it, creates a user, a token, a session and a queued job there (`_setup`), and
starts one uvicorn process on `downloads_project.asgi:application`. For each subscriber
count it then runs, one after the other:

- project: client processes (`_clients`) open the sockets of the job and read its snapshot;
  a publisher process (`_publish project`) calls `jobs.events.job_event_publish`, the
  worker's code path, at a fixed rate; every event carries `sent_at_ns` (time.time_ns()),
  and each client notes its receipt time.
- baseline: one process (`_baseline`) holds as many channels of the channel layer in one
  group and `receive()`s on each, as one ASGI process holding that many sockets does; a
  publisher (`_publish baseline`) awaits the bare `layer.group_send`. No ASGI, no WebSocket.

See bench/README.md.
"""

import argparse
import asyncio
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
# Run by path, Python puts bench/ first on sys.path, where this file would hide the
# `realtime` package: the project's root takes its place.
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]

from bench.report import Column, Table, log, percentile, ratio, results_save  # noqa: E402
from bench.sandbox import (  # noqa: E402
    Children,
    bench_env,
    django_setup,
    raised_open_file_limit,
    run_until_interrupted,
)
from devtools.servers import free_port, wait_for_port  # noqa: E402
from downloads_project import processes  # noqa: E402

BROKER_DB = 9  # as bench/staging.py: no job is dispatched, but no worker could take one either
WARMUP_EVENTS = 5  # sent first, at the same rate, and not counted
# Handshakes (and closes) in flight, over all client processes. Each one makes the server's
# consumer call group_add (group_discard), and the server's channels_redis pool allows 100
# Redis connections (redis-py's default): beyond that, commands fail with MaxConnectionsError.
IN_FLIGHT = 32
READY_TIMEOUT_S = 300  # to open all sockets (1,000 handshakes, each with a snapshot)
QUIET_S = 5.0  # once all events are sent, the readers stop after this long without a receipt
SELF = [sys.executable, str(Path(__file__).resolve())]  # this script, for its parts (`_clients`, ...)


# --- receivers: what each subscriber got ----------------------------------------------------


@dataclass
class Receipts:
    """What the subscribers of one process received. Latencies in microseconds."""

    subscribers: int
    events: int
    latencies_us: list[int] = field(default_factory=list)
    # For each event (by seq), the latest receipt over this process's subscribers, or -1.
    last_receipt_us: list[int] = field(default_factory=list)
    received: int = 0  # counted events (seq >= 0), duplicates included
    duplicates: int = 0
    closed: int = 0  # sockets that the server closed before the last event
    connect_s: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    last_at: float = 0.0  # time.monotonic() of the latest counted receipt

    def __post_init__(self) -> None:
        if not self.last_receipt_us:
            self.last_receipt_us = [-1] * self.events


class Subscriber:
    """The receipts of one socket (or one channel), counted into the process's Receipts."""

    def __init__(self, receipts: Receipts) -> None:
        self.receipts = receipts
        self.seen: set[int] = set()

    def note(self, event: dict[str, Any], received_ns: int) -> bool:
        """Counts one event; True once the last one arrived."""
        if event.get("type") != "bench":
            return False  # the snapshot, a heartbeat
        seq = int(event["seq"])
        if seq < 0:
            return False  # warm-up
        receipts = self.receipts
        if seq in self.seen:
            receipts.duplicates += 1
        self.seen.add(seq)
        latency = (received_ns - int(event["sent_at_ns"])) // 1000
        receipts.latencies_us.append(latency)
        receipts.received += 1
        receipts.last_at = time.monotonic()
        receipts.last_receipt_us[seq] = max(receipts.last_receipt_us[seq], latency)
        return seq == receipts.events - 1


async def stdin_line() -> str:
    """The next line the driver writes (it says "sent"), read without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return (await reader.readline()).decode()


async def read_until_done(readers: list[Awaitable[None]], receipts: Receipts) -> None:
    """Runs the readers until each has its last event, or, once the driver has said that
    all events are sent, until none arrived for QUIET_S; measures this process's CPU over
    that time, and tells the driver ("done")."""
    cpu, wall = time.process_time(), time.monotonic()
    tasks = [asyncio.ensure_future(reader) for reader in readers]
    everyone: asyncio.Future[Any] = asyncio.gather(*tasks)
    sent: asyncio.Future[Any] = asyncio.ensure_future(stdin_line())
    await asyncio.wait([everyone, sent], return_when=asyncio.FIRST_COMPLETED)
    while not everyone.done():
        quiet = time.monotonic() - max(receipts.last_at, wall)
        if quiet >= QUIET_S:
            break
        await asyncio.wait([everyone], timeout=QUIET_S - quiet)
    receipts.cpu_s, receipts.wall_s = time.process_time() - cpu, time.monotonic() - wall
    print("done", flush=True)
    sent.cancel()
    everyone.cancel()
    with suppress(asyncio.CancelledError):
        await everyone


# --- project subscribers (a subprocess: `realtime.py _clients`) ------------------------------


async def clients_main(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    receipts = Receipts(subscribers=args.count, events=args.events)
    headers = {"Cookie": args.cookie} if args.cookie else {}
    gate = asyncio.Semaphore(args.in_flight)

    async def open_socket() -> ClientConnection:
        async with gate:
            # Compression as browsers offer it (permessage-deflate); no client pings.
            socket = await connect(
                args.url,
                origin=Origin(args.origin),
                additional_headers=headers,
                open_timeout=120,
                ping_interval=None,
            )
            first = json.loads(await asyncio.wait_for(socket.recv(), 60))
            if first.get("type") != "snapshot":
                raise RuntimeError(f"expected the snapshot first, got {first}")
            return socket

    started = time.monotonic()
    sockets = await asyncio.gather(*(open_socket() for _ in range(args.count)))
    receipts.connect_s = time.monotonic() - started
    print("ready", flush=True)

    async def read(socket: ClientConnection) -> None:
        subscriber = Subscriber(receipts)
        try:
            async for raw in socket:
                received_ns = time.time_ns()
                if subscriber.note(json.loads(raw), received_ns):
                    return
        except ConnectionClosed:
            pass
        receipts.closed += 1  # by the server, before the last event: what is missing is lost

    async def close(socket: ClientConnection) -> None:
        async with gate:
            await socket.close()

    try:
        await read_until_done([read(socket) for socket in sockets], receipts)
    finally:
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*map(close, sockets), return_exceptions=True), 60)
    Path(args.out).write_text(json.dumps(asdict(receipts)))


# --- baseline subscribers (a subprocess: `realtime.py _baseline`) ----------------------------


async def baseline_main(args: argparse.Namespace) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    receipts = Receipts(subscribers=args.count, events=args.events)
    channels: list[str] = []
    try:
        started = time.monotonic()
        for _ in range(args.count):
            channel = await layer.new_channel()
            channels.append(channel)
            await layer.group_add(args.group, channel)
        receipts.connect_s = time.monotonic() - started
        print("ready", flush=True)

        async def read(channel: str) -> None:
            subscriber = Subscriber(receipts)
            while True:
                message = await layer.receive(channel)
                if subscriber.note(message["event"], time.time_ns()):
                    return

        await read_until_done([read(channel) for channel in channels], receipts)
    finally:
        for channel in channels:
            await layer.group_discard(args.group, channel)
    Path(args.out).write_text(json.dumps(asdict(receipts)))


# --- the publisher (a subprocess: `realtime.py _publish`) ------------------------------------


def bench_event(seq: int) -> dict[str, Any]:
    return {"type": "bench", "seq": seq, "sent_at_ns": time.time_ns()}


def publish_main(args: argparse.Namespace) -> None:
    """Publishes the warm-up events, then `--events` events, at `--rate` per second; prints
    how long each publish call took (JSON)."""
    calls: list[float] = []
    seqs = range(-WARMUP_EVENTS, args.events)

    def due(index: int, start: float) -> float:
        return start + index / args.rate - time.monotonic()

    if args.mode == "project":
        from jobs.events import job_event_publish

        start = time.monotonic()
        for index, seq in enumerate(seqs):
            time.sleep(max(0.0, due(index, start)))
            began = time.perf_counter()
            job_event_publish(args.target, bench_event(seq))
            calls.append(time.perf_counter() - began)
    else:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def publish() -> None:
            start = time.monotonic()
            for index, seq in enumerate(seqs):
                await asyncio.sleep(max(0.0, due(index, start)))
                began = time.perf_counter()
                await layer.group_send(args.target, {"type": "job.event", "event": bench_event(seq)})
                calls.append(time.perf_counter() - began)

        asyncio.run(publish())
    counted = sorted(calls[WARMUP_EVENTS:])
    print(
        json.dumps(
            {"call_p50_ms": percentile(counted, 50) * 1000, "call_p99_ms": percentile(counted, 99) * 1000}
        ),
        flush=True,
    )


# --- setup (a subprocess: `realtime.py _setup`) ----------------------------------------------


def setup_main(out: Path) -> None:
    """A user with a token and a session, and a queued job of theirs (no worker takes it:
    it stays queued, so its sockets stay open)."""
    django_setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from jobs.models import DownloadJob

    user = User.objects.create_user("bench-realtime")
    client = Client()
    client.force_login(user)
    job = DownloadJob.objects.create(owner=user, file_id=424242)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    token = Token.objects.create(user=user).key
    cookie = f"{settings.SESSION_COOKIE_NAME}={session}"
    out.write_text(json.dumps({"job_id": job.job_id, "token": token, "cookie": cookie}))


# --- the driver --------------------------------------------------------------------------------


def read_line(process: subprocess.Popen[str], timeout_s: float, children: Children, name: str) -> str:
    """The child's next stdout line, or an error with its log if it exits or takes too long."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise RuntimeError(f"{name} said nothing in {timeout_s:.0f} s:\n{children.log_tail(name, 20)}")
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"{name} exited with {process.returncode}:\n{children.log_tail(name, 20)}")
    return line.strip()


def say_sent(process: subprocess.Popen[str]) -> None:
    """Tells a receiver that all events are sent."""
    if process.stdin is not None:
        with suppress(OSError):
            process.stdin.write("sent\n")
            process.stdin.flush()


@dataclass
class Side:
    """One measurement (project or baseline) at one subscriber count, all processes merged."""

    latencies_us: list[int]
    last_receipt_us: list[int]
    expected: int
    received: int
    duplicates: int
    closed: int
    connect_s: float
    receiver_cpu_s: float
    publish: dict[str, float]
    server_cpu_s: float | None = None

    @property
    def lost(self) -> int:
        return self.expected - (self.received - self.duplicates)

    @property
    def unseen(self) -> int:
        """Events that no subscriber received."""
        return sum(1 for value in self.last_receipt_us if value < 0)

    def p(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000

    def per_message_us(self, cpu_s: float | None) -> float:
        received = self.received - self.duplicates
        return cpu_s * 1e6 / received if cpu_s is not None and received else float("nan")

    def last_p(self, q: float) -> float:
        return percentile(sorted(value for value in self.last_receipt_us if value >= 0), q) / 1000


def merge(parts: list[Receipts], publish: dict[str, float], server_cpu_s: float | None) -> Side:
    events = parts[0].events
    last = [max(part.last_receipt_us[seq] for part in parts) for seq in range(events)]
    return Side(
        latencies_us=sorted(value for part in parts for value in part.latencies_us),
        last_receipt_us=last,
        expected=sum(part.subscribers for part in parts) * events,
        received=sum(part.received for part in parts),
        duplicates=sum(part.duplicates for part in parts),
        closed=sum(part.closed for part in parts),
        connect_s=max(part.connect_s for part in parts),
        receiver_cpu_s=sum(part.cpu_s for part in parts),
        publish=publish,
        server_cpu_s=server_cpu_s,
    )


def measure(
    children: Children,
    tmp: Path,
    name: str,
    receivers: list[tuple[str, list[str]]],
    publisher: list[str],
    server: psutil.Process | None,
) -> Side:
    """Starts the receivers, waits until all are ready, runs the publisher, then collects."""
    started: list[tuple[str, subprocess.Popen[str], Path]] = []
    try:
        for receiver, argv in receivers:
            out = tmp / f"{receiver}.json"
            started.append(
                (receiver, children.start(receiver, [*SELF, *argv, "--out", str(out)], pipes=True), out)
            )
        for receiver, process, _ in started:
            read_line(process, READY_TIMEOUT_S, children, receiver)
        cpu_before = sum(server.cpu_times()[:2]) if server is not None else 0.0
        publishing = children.start(f"{name}-publish", [*SELF, *publisher], pipes=True)
        publish = json.loads(read_line(publishing, 600, children, f"{name}-publish"))
        publishing.wait(timeout=60)
        children.stop(publishing)
        for _, process, _ in started:
            say_sent(process)
        for receiver, process, _ in started:
            read_line(process, 3600, children, receiver)  # "done": it has read all it will
        server_cpu = sum(server.cpu_times()[:2]) - cpu_before if server is not None else None
        parts = []
        for receiver, process, out in started:
            if process.wait(timeout=120) != 0 or not out.exists():
                raise RuntimeError(
                    f"{receiver} failed ({process.returncode}):\n{children.log_tail(receiver, 20)}"
                )
            parts.append(Receipts(**json.loads(out.read_text())))
            out.unlink()
        return merge(parts, publish, server_cpu)
    finally:
        for _, process, _ in started:
            children.stop(process)


def ws_auth(url: str, origin: str, token: str, cookie: str) -> tuple[str, str]:
    """`?token=` when the consumer takes it, else the session cookie: (query, cookie)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    async def token_works() -> bool:
        async with connect(f"{url}?token={token}", origin=Origin(origin), open_timeout=30) as socket:
            try:
                first = json.loads(await asyncio.wait_for(socket.recv(), 30))
            except ConnectionClosed:
                return False
            return bool(first.get("type") == "snapshot")

    return (f"?token={token}", "") if asyncio.run(token_works()) else ("", cookie)


@dataclass
class Target:
    """The job's socket, as the clients open it."""

    url: str
    cookie: str
    origin: str
    job_id: str
    auth: str  # "?token=" or "session cookie", for the header


@dataclass
class Row:
    subscribers: int
    client_procs: int
    project: Side
    baseline: Side


def measure_count(
    children: Children,
    tmp: Path,
    target: Target,
    server: psutil.Process,
    count: int,
    args: argparse.Namespace,
) -> Row:
    """The project, then the baseline, with `count` subscribers."""
    procs = args.client_procs or (1 if count <= 100 else 2)
    shares = [
        share for share in (count // procs + (index < count % procs) for index in range(procs)) if share
    ]
    log(f"\n== {count} subscriber(s): project ({len(shares)} client process(es)), then baseline ==")
    common = ["--events", str(args.events)]
    client = ["_clients", "--url", target.url, "--cookie", target.cookie, "--origin", target.origin, *common]
    client += ["--in-flight", str(max(1, IN_FLIGHT // len(shares)))]
    clients = [
        (f"clients-{count}-{index}", [*client, "--count", str(share)]) for index, share in enumerate(shares)
    ]
    publisher = ["_publish", "project", target.job_id, "--rate", str(args.rate), *common]
    project = measure(children, tmp, f"project-{count}", clients, publisher, server)
    log_side("project", project)
    group = f"bench.realtime.{uuid.uuid4().hex}"
    receivers = [(f"baseline-{count}", ["_baseline", "--group", group, "--count", str(count), *common])]
    publisher = ["_publish", "baseline", group, "--rate", str(args.rate), *common]
    baseline = measure(children, tmp, f"baseline-{count}", receivers, publisher, None)
    log_side("baseline", baseline)
    return Row(count, len(shares), project, baseline)


def driver_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    counts = [int(value) for value in args.subscribers.split(",") if value]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-realtime-")))
        (tmp / "logs").mkdir()
        if args.logs:  # copied at the end, after the children stopped (the stack unwinds in reverse)
            stack.callback(shutil.copytree, tmp / "logs", args.logs, dirs_exist_ok=True)
        nofile = stack.enter_context(raised_open_file_limit(max(counts) * 2 + 1024))
        env = bench_env(stack, tmp / "var", broker_db=BROKER_DB)
        # Every subscriber is the one benchmark user: lift the per-user socket cap for it.
        env["WEBSOCKET_MAX_PER_USER"] = str(max(counts) + 10)
        children = Children(env, tmp / "logs", whole_group=True)
        stack.callback(children.stop_all)
        uvicorn, target = server_start(children, setup_run(env, tmp))
        header_print(args, nofile, target)
        server = psutil.Process(uvicorn.pid)
        rows = rows_measure(children, tmp, target, server, counts, args)
        server_rss = server.memory_info().rss
        children.stop(uvicorn, graceful_s=15)
        delays_print(rows, args)
        cpu_print(rows, args)
        elapsed = time.monotonic() - started
        log(
            f"\nuvicorn RSS at the end: {server_rss / 2**20:.0f} MiB. benchmark wall time: {elapsed:.0f} s; "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        if args.save:
            save(rows, args, elapsed)
    return 0


def setup_run(env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """The benchmark's user, token, session and queued job (`_setup`)."""
    setup_out = tmp / "setup.json"
    subprocess.run([*SELF, "_setup", "--out", str(setup_out)], env=env, cwd=ROOT, check=True)
    setup: dict[str, Any] = json.loads(setup_out.read_text())
    return setup


def server_start(children: Children, setup: dict[str, Any]) -> tuple[subprocess.Popen[str], Target]:
    """uvicorn on a free port, and the job's socket on it, with the authentication it takes."""
    port = free_port()
    uvicorn = children.start(
        "uvicorn",
        processes.web_argv(port=port, extra=("--no-access-log", "--log-level", "warning")),
    )
    wait_for_port(port, process=uvicorn)
    origin = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/v1/download/subscribe/{setup['job_id']}"
    query, cookie = ws_auth(url, origin, setup["token"], setup["cookie"])
    auth = "?token=" if query else "session cookie"
    return uvicorn, Target(url=url + query, cookie=cookie, origin=origin, job_id=setup["job_id"], auth=auth)


def header_print(args: argparse.Namespace, nofile: int, target: Target) -> None:
    import channels_redis
    import uvicorn as uvicorn_module
    import websockets

    log(
        f"realtime benchmark  Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; uvicorn "
        f"{uvicorn_module.__version__} (one process), channels_redis {channels_redis.__version__}, "
        f"websockets {websockets.__version__}; open files limit {nofile}"
    )
    log(
        f"{args.events} events at {args.rate:g}/s (+{WARMUP_EVENTS} warm-up) per measurement; "
        f"WebSocket auth: {target.auth}; Origin {target.origin}"
    )


def rows_measure(
    children: Children,
    tmp: Path,
    target: Target,
    server: psutil.Process,
    counts: list[int],
    args: argparse.Namespace,
) -> list[Row]:
    """The measurements at each subscriber count, in turn; uvicorn's log if one fails."""
    try:
        return [measure_count(children, tmp, target, server, count, args) for count in counts]
    except RuntimeError:
        log(f"uvicorn's log:\n{children.log_tail('uvicorn', 40)}")
        raise


DELAYS_TABLE = Table(
    Column("subscribers", 11),
    Column("project p50", 11, ".1f"),
    Column("p99", 7, ".1f"),
    Column("baseline p50", 12, ".1f"),
    Column("p99", 7, ".1f"),
    Column("ratio p50", 9, ".1f"),
    Column("p99", 5, ".1f"),
    Column("lost project", 12),
    Column("baseline", 8),
)


def delays_print(rows: list[Row], args: argparse.Namespace) -> None:
    log(
        f"\ndelay from publish to receipt, ms, over {args.events} events x subscribers "
        "(project: job_event_publish -> channel layer -> uvicorn/JobConsumer -> WebSocket client; "
        "baseline: group_send -> layer.receive in one process)"
    )
    DELAYS_TABLE.print_header()
    for row in rows:
        project, baseline = row.project, row.baseline
        DELAYS_TABLE.print_row(
            row.subscribers,
            project.p(50),
            project.p(99),
            baseline.p(50),
            baseline.p(99),
            ratio(project.p(50), baseline.p(50)),
            ratio(project.p(99), baseline.p(99)),
            project.lost,
            baseline.lost,
        )


CPU_TABLE = Table(
    Column("subscribers", 11),
    Column("clients", 7),
    Column("last p50", 8, ".1f"),
    Column("p99", 8, ".1f"),
    Column("baseline last p50", 17, ".1f"),
    Column("p99", 7, ".1f"),
    Column("server us", 9, ".0f"),
    Column("load", 5, ".2f"),
    Column("clients us", 10, ".0f"),
    Column("load", 5, ".2f"),
    Column("baseline us", 11, ".0f"),
    Column("load", 5, ".2f"),
    Column("connect", 7, ".1f"),
)


def cpu_print(rows: list[Row], args: argparse.Namespace) -> None:
    span = args.events / args.rate
    log(
        "\nper event, until its LAST subscriber had it (ms). CPU per message received (us) and "
        f"CPU load (CPU s over the {span:g} s of events; over 1.0 for one process means it "
        "fell behind): server = the uvicorn process, clients = all client processes, "
        "baseline = its receiving process. connect = the time to open all sockets (s)"
    )
    CPU_TABLE.print_header()
    for row in rows:
        project, baseline = row.project, row.baseline
        server_cpu, clients_cpu = project.server_cpu_s or 0.0, project.receiver_cpu_s
        CPU_TABLE.print_row(
            row.subscribers,
            row.client_procs,
            project.last_p(50),
            project.last_p(99),
            baseline.last_p(50),
            baseline.last_p(99),
            project.per_message_us(server_cpu),
            server_cpu / span,
            project.per_message_us(clients_cpu),
            clients_cpu / span,
            baseline.per_message_us(baseline.receiver_cpu_s),
            baseline.receiver_cpu_s / span,
            project.connect_s,
        )


def save(rows: list[Row], args: argparse.Namespace, elapsed: float) -> None:
    summary = [
        {
            "subscribers": row.subscribers,
            "client_procs": row.client_procs,
            **{
                f"{side}_{key}": value
                for side in ("project", "baseline")
                for key, value in summarize(getattr(row, side)).items()
            },
        }
        for row in rows
    ]
    results_save("realtime", {"events": args.events, "rate": args.rate, "rows": summary, "wall_s": elapsed})


def summarize(side: Side) -> dict[str, Any]:
    return {
        "p50_ms": side.p(50),
        "p99_ms": side.p(99),
        "max_ms": side.p(100),
        "last_p50_ms": side.last_p(50),
        "last_p99_ms": side.last_p(99),
        "lost": side.lost,
        "events_unseen": side.unseen,
        "duplicates": side.duplicates,
        "closed_by_server": side.closed,
        "receiver_cpu_s": side.receiver_cpu_s,
        "server_cpu_s": side.server_cpu_s,
        "connect_s": side.connect_s,
        "publish_call_p50_ms": side.publish["call_p50_ms"],
        "publish_call_p99_ms": side.publish["call_p99_ms"],
    }


def log_side(name: str, side: Side) -> None:
    log(
        f"  {name}: p50 {side.p(50):.1f} ms, p99 {side.p(99):.1f} ms, max {side.p(100):.1f} ms; "
        f"lost {side.lost} of {side.expected} ({side.unseen} events reached no subscriber), "
        f"duplicates {side.duplicates}, sockets closed early {side.closed}; subscribed in "
        f"{side.connect_s:.1f} s; publish call p50 {side.publish['call_p50_ms']:.2f} ms, "
        f"p99 {side.publish['call_p99_ms']:.2f} ms"
    )


# --- entry points ------------------------------------------------------------------------------


def run_async(main: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace) -> None:
    async def cancelled_on_sigterm() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main(args)

    with suppress(asyncio.CancelledError):
        asyncio.run(cancelled_on_sigterm())


def main(argv: list[str]) -> None:
    if argv and argv[0].startswith("_"):
        sub(argv)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", default="1,100,1000", help="subscriber counts (default 1,100,1000)")
    parser.add_argument("--events", type=int, default=200, help="events per measurement (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="WebSocket client processes (default: 1 up to 100 sockets, else 2)",
    )
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/*.json"
    )
    parser.add_argument("--logs", type=Path, help="copy the processes' logs to this directory at the end")
    args = parser.parse_args(argv)
    run_until_interrupted(lambda: driver_main(args))


def sub(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"realtime.py {argv[0]}")
    parser.add_argument("--out", type=Path)
    if argv[0] == "_setup":
        setup_main(parser.parse_args(argv[1:]).out)
        return
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--count", type=int)
    if argv[0] == "_clients":
        parser.add_argument("--url", required=True)
        parser.add_argument("--cookie", default="")
        parser.add_argument("--origin", required=True)
        parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
        run_async(clients_main, parser.parse_args(argv[1:]))
    elif argv[0] == "_baseline":
        parser.add_argument("--group", required=True)
        django_setup()
        run_async(baseline_main, parser.parse_args(argv[1:]))
    elif argv[0] == "_publish":
        parser.add_argument("mode", choices=("project", "baseline"))
        parser.add_argument("target", help="the job id (project) or the group (baseline)")
        parser.add_argument("--rate", type=float, required=True)
        django_setup()
        publish_main(parser.parse_args(argv[1:]))
    else:
        raise SystemExit(f"unknown part {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
