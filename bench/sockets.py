"""Realtime benchmark: the delay from a worker-side publish to the WebSocket clients of a job,
for 1, 100 and 1,000 subscribers on one ASGI process, beside the channel layer's own delay.
Prints figures; asserts nothing.

    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.sockets
    .venv/bin/python -m stack.embedded .venv/bin/python -m bench.sockets \\
        --subscribers 1,100 --events 50                # a quick run
    REDIS_URL=redis://127.0.0.1:6379 .venv/bin/python -m bench.sockets --profile production

Layout: this process (the driver) makes a throwaway VAR_DIR with a SQLite database (with
`--profile production`, a throwaway PostgreSQL database, and the Redis of REDIS_URL),
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
- bare consumer: the same clients on a second uvicorn process (the same command line)
  serving `bench/sockets_bare.py`, a stock `AsyncWebsocketConsumer` that forwards its
  group's messages; published with the bare `layer.group_send`.

A second shape (`--jobs`, default 1000): N sockets each of its own job, `--many-events` per
job at `--many-rate` (4/s), the last one terminal; project, then bare consumer, with the same
publishers (`publish_many`: one publish per event and job). The issue's goals are printed
with pass or MISS, and a note when the publishers fell behind their schedule.

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

from bench.report import Column, Table, log, percentile, ratio, results_save
from bench.sandbox import (
    Children,
    bench_env,
    django_setup,
    postgres_database,
    raised_open_file_limit,
    run_until_interrupted,
)
from devtools.servers import free_port, wait_for_port
from stack import processes

ROOT = Path(__file__).resolve().parent.parent

BROKER_DB = 9  # as bench/staging.py: no job is dispatched, but no worker could take one either
WARMUP_EVENTS = 5  # sent first, at the same rate, and not counted
# Handshakes (and closes) in flight, over all client processes. Each one makes the server's
# consumer call group_add (group_discard), and the server's channels_redis pool allows 100
# Redis connections (redis-py's default): beyond that, commands fail with MaxConnectionsError.
IN_FLIGHT = 32
READY_TIMEOUT_S = 300  # to open all sockets (1,000 handshakes, each with a snapshot)
QUIET_S = 5.0  # once all events are sent, the readers stop after this long without a receipt
BARE_APP = "bench.sockets_bare:application"  # the bare-consumer baseline, on its own uvicorn
SELF = [sys.executable, "-m", "bench.sockets"]  # this script, for its parts (`_clients`, ...)


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
    terminal: int = 0  # subscribers that received the last event (the terminal one)
    # Events a subscriber did not get, but got a later one of: it has the newer state (the
    # project's consumer skips a progress event that a newer one replaces, when behind).
    skipped: int = 0

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
        if event.get("type") not in ("progress", "completed"):
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
        if seq == receipts.events - 1:
            receipts.terminal += 1
            return True
        return False

    def finish(self) -> None:
        """Counts the events this subscriber missed but got a later one of."""
        if self.seen:
            self.receipts.skipped += max(self.seen) + 1 - len(self.seen)


async def stdin_line() -> str:
    """The next line the driver writes (it says "sent"), read without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return (await reader.readline()).decode()


async def read_until_done(readers: list[Awaitable[None]], receipts: Receipts) -> None:
    """Runs the readers until each has its last event, or, once the driver has said that
    all events are sent, until none arrived for QUIET_S (since then); measures this
    process's CPU over that time, and tells the driver ("done")."""
    cpu, wall = time.process_time(), time.monotonic()
    tasks = [asyncio.ensure_future(reader) for reader in readers]
    everyone: asyncio.Future[Any] = asyncio.gather(*tasks)
    sent: asyncio.Future[Any] = asyncio.ensure_future(stdin_line())
    await asyncio.wait([everyone, sent], return_when=asyncio.FIRST_COMPLETED)
    # Quiet since the last receipt or since all was sent, whichever is later: a process whose
    # sockets had nothing yet from a server far behind still waits QUIET_S for them.
    sent_at = time.monotonic()
    while not everyone.done():
        quiet = time.monotonic() - max(receipts.last_at, sent_at)
        if quiet >= QUIET_S:
            break
        await asyncio.wait([everyone], timeout=QUIET_S - quiet)
    receipts.cpu_s, receipts.wall_s = time.process_time() - cpu, time.monotonic() - wall
    print("done", flush=True)
    sent.cancel()
    everyone.cancel()
    with suppress(asyncio.CancelledError):
        await everyone


# --- project subscribers (a subprocess: `sockets.py _clients`) ------------------------------


async def clients_main(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    receipts = Receipts(subscribers=args.count, events=args.events)
    headers = {"Cookie": args.cookie} if args.cookie else {}
    gate = asyncio.Semaphore(args.in_flight)

    urls = json.loads(Path(args.urls).read_text()) if args.urls else [args.url]

    async def open_socket(index: int) -> ClientConnection:
        async with gate:
            # Compression as browsers offer it (permessage-deflate); no client pings.
            socket = await connect(
                urls[index % len(urls)],
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
    sockets = await asyncio.gather(*(open_socket(index) for index in range(args.count)))
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
        finally:
            subscriber.finish()
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


# --- baseline subscribers (a subprocess: `sockets.py _baseline`) ----------------------------


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
            try:
                while True:
                    message = await layer.receive(channel)
                    if subscriber.note(message["event"], time.time_ns()):
                        return
            finally:
                subscriber.finish()

        await read_until_done([read(channel) for channel in channels], receipts)
    finally:
        for channel in channels:
            await layer.group_discard(args.group, channel)
    Path(args.out).write_text(json.dumps(asdict(receipts)))


# --- the publisher (a subprocess: `sockets.py _publish`) ------------------------------------


def bench_event(seq: int, events: int, *, terminal: bool = False) -> dict[str, Any]:
    """Event `seq` of `events`: a progress event as the worker sends them (its progress
    never goes down, so the project's consumer drops none as outdated), or with `terminal`
    the last one is `completed` (after which the project's consumer closes the socket)."""
    if terminal and seq == events - 1:
        return {
            "type": "completed",
            "status": "completed",
            "progress": 100,
            "seq": seq,
            "sent_at_ns": time.time_ns(),
        }
    progress = max(0, seq) * 100 // events
    return {
        "type": "progress",
        "status": "processing",
        "progress": progress,
        "seq": seq,
        "sent_at_ns": time.time_ns(),
    }


# A publisher that starts its calls later than this (p99) behind its schedule is a bottleneck
# of the benchmark itself: the goals' figures then measure it, not the server.
PUBLISHER_LAG_WARN_MS = 50.0
PUBLISH_IN_FLIGHT = 64  # group_sends awaited at once by a many-jobs publisher (group_send)
MANY_TARGETS_PER_PUBLISHER = 500  # a many-jobs publisher process per this many jobs
TICK_S = 0.001  # a many-jobs publisher sends what is due within a tick together


@dataclass
class Published:
    """What one publisher process did: how long each counted call took, how late each
    call started against its schedule (waiting for CPU or for a free slot), and its CPU."""

    calls: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def summary(self) -> dict[str, float]:
        calls, lags = sorted(self.calls), sorted(self.lags)
        return {
            "call_p50_ms": percentile(calls, 50) * 1000,
            "call_p99_ms": percentile(calls, 99) * 1000,
            "lag_p99_ms": percentile(lags, 99) * 1000,
            "cpu_s": self.cpu_s,
        }


def many_publish_mode(requested: str) -> str:
    """`pipeline` with the pub/sub channel layer (unless `group_send` is asked for), else
    `group_send`: pipelining needs to know how the layer names a group's channel."""
    from django.conf import settings

    pubsub = settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    if requested == "pipeline" and not pubsub:
        raise SystemExit("--many-publish pipeline needs CHANNEL_LAYER_BACKEND=pubsub")
    return "pipeline" if requested == "pipeline" or (requested == "auto" and pubsub) else "group_send"


def publish_many(args: argparse.Namespace) -> Published:
    """Each group of `--targets` gets `--events` events at `--rate` per second, the groups'
    schedules spread evenly over one period; the last event of each is terminal. The message
    is the one `jobs.events.job_event_publish` sends (`project`), or the bare one (`bare`).

    One publish per event and job, as the worker running that job makes it. With
    `group_send`, each is an awaited `layer.group_send` (at most PUBLISH_IN_FLIGHT at once).
    With `pipeline` (the pub/sub layer), each is the PUBLISH that `group_send` would make,
    the same channel and bytes, but those due within TICK_S of each other go to Redis in
    one pipeline: to the web process the stream is the same, and the publishers, which
    share this host's cores with it (the workers run elsewhere), spend a fraction of the CPU."""
    import uvloop
    from channels.layers import get_channel_layer

    from jobs.events import job_event_message, job_group_name

    layer = get_channel_layer()
    targets: list[str] = json.loads(Path(args.target).read_text())
    groups = [job_group_name(target) if args.mode == "project" else target for target in targets]
    schedule = sorted(
        ((index + position / len(groups)) / args.rate, seq, group)
        for index, seq in enumerate(range(-WARMUP_EVENTS, args.events))
        for position, group in enumerate(groups)
    )
    published = Published()

    def message(seq: int) -> dict[str, Any]:
        event = bench_event(seq, args.events, terminal=True)
        return job_event_message(event) if args.mode == "project" else {"type": "job.event", "event": event}

    def note(seq: int, due: float, began: float, ended: float) -> None:
        if seq >= 0:
            published.calls.append(ended - began)
            published.lags.append(max(0.0, began - due))

    async def by_group_send() -> None:
        gate = asyncio.Semaphore(PUBLISH_IN_FLIGHT)

        async def send(group: str, seq: int, due: float) -> None:
            async with gate:
                began = time.perf_counter()
                await layer.group_send(group, message(seq))
                note(seq, due, began, time.perf_counter())

        start, tasks = time.perf_counter(), []
        for due, seq, group in schedule:
            # A timer per send would cost the publisher more CPU than the send.
            if (wait := start + due - time.perf_counter()) > TICK_S:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(send(group, seq, start + due)))
        await asyncio.gather(*tasks)

    async def by_pipeline() -> None:
        from channels_redis.utils import create_pool, decode_hosts
        from django.conf import settings
        from redis import asyncio as aioredis

        layers: Any = settings.CHANNEL_LAYERS
        (host,) = decode_hosts(layers["default"]["CONFIG"]["hosts"])
        client = aioredis.Redis(connection_pool=create_pool(host))
        loop_layer = layer._get_layer()
        start, next_index = time.perf_counter(), 0
        while next_index < len(schedule):
            if (wait := start + schedule[next_index][0] - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            now = time.perf_counter() - start
            batch = []
            while next_index < len(schedule) and schedule[next_index][0] <= now + TICK_S:
                batch.append(schedule[next_index])
                next_index += 1
            pipe = client.pipeline(transaction=False)
            for _, seq, group in batch:
                pipe.publish(loop_layer._get_group_channel_name(group), layer.serialize(message(seq)))
            began = time.perf_counter()
            await pipe.execute()
            ended = time.perf_counter()
            for due, seq, _ in batch:
                note(seq, start + due, began, ended)
        await client.aclose()

    # uvloop, as the server: the publishers' CPU is the benchmark's own cost on this host,
    # taken from the same cores as the server's.
    cpu = time.process_time()
    uvloop.run(by_pipeline() if args.publish == "pipeline" else by_group_send())
    published.cpu_s = time.process_time() - cpu
    return published


def publish_main(args: argparse.Namespace) -> None:
    """Publishes the warm-up events, then `--events` events, at `--rate` per second; prints
    how long the publish calls took, how late they started, and the CPU spent (JSON)."""
    seqs = range(-WARMUP_EVENTS, args.events)
    published = Published()

    def due(index: int, start: float) -> float:
        return start + index / args.rate

    def note(index: int, start: float, began: float) -> None:
        if index >= WARMUP_EVENTS:
            published.calls.append(time.perf_counter() - began)
            published.lags.append(max(0.0, began - due(index, start)))

    cpu = time.process_time()
    if args.many:
        published = publish_many(args)
    elif args.mode == "project":
        from jobs.events import job_event_publish

        start = time.perf_counter()
        for index, seq in enumerate(seqs):
            time.sleep(max(0.0, due(index, start) - time.perf_counter()))
            began = time.perf_counter()
            job_event_publish(args.target, bench_event(seq, args.events))
            note(index, start, began)
    else:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def publish() -> None:
            start = time.perf_counter()
            for index, seq in enumerate(seqs):
                await asyncio.sleep(max(0.0, due(index, start) - time.perf_counter()))
                began = time.perf_counter()
                await layer.group_send(
                    args.target, {"type": "job.event", "event": bench_event(seq, args.events)}
                )
                note(index, start, began)

        asyncio.run(publish())
    if not args.many:
        published.cpu_s = time.process_time() - cpu
    print(json.dumps(published.summary()), flush=True)


# --- setup (a subprocess: `sockets.py _setup`) ----------------------------------------------


def setup_main(out: Path, jobs: int) -> None:
    """A user with a token and a session, and `jobs` queued jobs of theirs (no worker takes
    them: they stay queued, so their sockets stay open)."""
    django_setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    from jobs.api_keys import api_key_create
    from jobs.models import DownloadJob

    user = User.objects.create_user("bench-realtime")
    client = Client()
    client.force_login(user)
    job_ids = [DownloadJob.objects.create(owner=user, file_id=424242 + index).job_id for index in range(jobs)]
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    token = api_key_create(user=user, name="bench")[1]
    cookie = f"{settings.SESSION_COOKIE_NAME}={session}"
    out.write_text(json.dumps({"job_id": job_ids[0], "job_ids": job_ids, "token": token, "cookie": cookie}))


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
    subscribers: int = 0
    terminal: int = 0  # subscribers that had the last (terminal) event
    skipped: int = 0  # events a subscriber missed but had a later one of

    @property
    def terminal_lost(self) -> int:
        return self.subscribers - self.terminal

    @property
    def lost(self) -> int:
        """Events a subscriber never had, nor any later one."""
        return self.expected - (self.received - self.duplicates) - self.skipped

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
        subscribers=sum(part.subscribers for part in parts),
        terminal=sum(part.terminal for part in parts),
        skipped=sum(part.skipped for part in parts),
    )


def measure(
    children: Children,
    tmp: Path,
    name: str,
    receivers: list[tuple[str, list[str]]],
    publishers: list[list[str]],
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
        publishing = [
            children.start(f"{name}-publish-{index}", [*SELF, *publisher], pipes=True)
            for index, publisher in enumerate(publishers)
        ]
        calls = [
            json.loads(read_line(process, 900, children, f"{name}-publish-{index}"))
            for index, process in enumerate(publishing)
        ]
        publish = {key: (sum if key == "cpu_s" else max)(call[key] for call in calls) for key in calls[0]}
        for process in publishing:
            process.wait(timeout=60)
            children.stop(process)
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
    """The sockets, as the clients open them: the project's (one per job) and the bare
    consumer's (one per group)."""

    project_url: str  # + job id + query
    query: str
    cookie: str
    origin: str
    job_ids: list[str]
    auth: str  # "?token=" or "session cookie", for the header
    bare_url: str  # + group
    bare_origin: str

    def job_url(self, job_id: str) -> str:
        return f"{self.project_url}{job_id}{self.query}"


@dataclass
class Servers:
    project: psutil.Process
    bare: psutil.Process


@dataclass
class Row:
    shape: str  # "one-job" or "many-jobs"
    subscribers: int
    client_procs: int
    span_s: float  # how long the events of one measurement last
    sides: dict[str, Side]  # "project", "bare consumer", and for one job "layer"


def client_receivers(
    tmp: Path, name: str, urls: list[str], cookie: str, origin: str, events: int, args: argparse.Namespace
) -> list[tuple[str, list[str]]]:
    """Client processes for one socket per URL: 1 up to 100 sockets, else 2 (`--client-procs`)."""
    procs = args.client_procs or (1 if len(urls) <= 100 else 2)
    receivers = []
    for index in range(procs):
        share = urls[index::procs]
        if not share:
            continue
        urls_file = tmp / f"{name}-{index}-urls.json"
        urls_file.write_text(json.dumps(share))
        argv = ["_clients", "--urls", str(urls_file), "--cookie", cookie, "--origin", origin]
        argv += [
            "--events",
            str(events),
            "--count",
            str(len(share)),
            "--in-flight",
            str(max(1, IN_FLIGHT // procs)),
        ]
        receivers.append((f"{name}-{index}", argv))
    return receivers


def many_publishers(
    tmp: Path, name: str, mode: str, targets: list[str], events: int, rate: float, publish: str
) -> list[list[str]]:
    """`_publish MODE --many` processes for these targets: one per MANY_TARGETS_PER_PUBLISHER."""
    procs = max(1, -(-len(targets) // MANY_TARGETS_PER_PUBLISHER))
    publishers = []
    for index in range(procs):
        targets_file = tmp / f"{name}-{index}-targets.json"
        targets_file.write_text(json.dumps(targets[index::procs]))
        publishers.append(
            [
                *("_publish", mode, str(targets_file), "--many", "--rate", str(rate)),
                *("--events", str(events), "--publish", publish),
            ]
        )
    return publishers


def measure_one_job(
    children: Children, tmp: Path, target: Target, servers: Servers, count: int, args: argparse.Namespace
) -> Row:
    """`count` sockets of one job, `--events` at `--rate`: the project, the bare consumer,
    then the bare layer."""
    events, rate = args.events, args.rate
    common = ["--events", str(events)]
    name = f"one-job-{count}"
    clients = client_receivers(tmp, f"{name}-project", [target.job_url(target.job_ids[0])] * count,
                               target.cookie, target.origin, events, args)  # fmt: skip
    log(
        f"\n== one job, {count} socket(s): project ({len(clients)} client process(es)), bare consumer, "
        "layer =="
    )
    sides: dict[str, Side] = {}
    publisher = ["_publish", "project", target.job_ids[0], "--rate", str(rate), *common]
    sides["project"] = measure(children, tmp, f"{name}-project", clients, [publisher], servers.project)
    group = f"bench.bare.{uuid.uuid4().hex}"
    clients = client_receivers(
        tmp, f"{name}-bare", [target.bare_url + group] * count, "", target.bare_origin, events, args
    )
    publisher = ["_publish", "baseline", group, "--rate", str(rate), *common]
    sides["bare consumer"] = measure(children, tmp, f"{name}-bare", clients, [publisher], servers.bare)
    group = f"bench.sockets.{uuid.uuid4().hex}"
    receivers = [(f"{name}-layer", ["_baseline", "--group", group, "--count", str(count), *common])]
    publisher = ["_publish", "baseline", group, "--rate", str(rate), *common]
    sides["layer"] = measure(children, tmp, f"{name}-layer", receivers, [publisher], None)
    for side, measured in sides.items():
        log_side(side, measured)
    return Row("one-job", count, len(clients), events / rate, sides)


def measure_many_jobs(
    children: Children, tmp: Path, target: Target, servers: Servers, count: int, args: argparse.Namespace
) -> Row:
    """`count` sockets, each of its own job, `--many-events` per job at `--many-rate`, the last
    one terminal: the project, then the bare consumer."""
    events, rate = args.many_events, args.many_rate
    name = f"many-jobs-{count}"
    job_ids = target.job_ids[:count]
    clients = client_receivers(tmp, f"{name}-project", [target.job_url(job_id) for job_id in job_ids],
                               target.cookie, target.origin, events, args)  # fmt: skip
    log(
        f"\n== {count} socket(s) of {count} job(s): project ({len(clients)} client process(es)), "
        "bare consumer =="
    )
    sides: dict[str, Side] = {}
    publish = many_publish_mode(args.many_publish)
    publishers = many_publishers(tmp, f"{name}-project", "project", job_ids, events, rate, publish)
    sides["project"] = measure(children, tmp, f"{name}-project", clients, publishers, servers.project)
    groups = [f"bench.bare.{uuid.uuid4().hex}" for _ in range(count)]
    clients = client_receivers(tmp, f"{name}-bare", [target.bare_url + group for group in groups], "",
                               target.bare_origin, events, args)  # fmt: skip
    publishers = many_publishers(tmp, f"{name}-bare", "bare", groups, events, rate, publish)
    sides["bare consumer"] = measure(children, tmp, f"{name}-bare", clients, publishers, servers.bare)
    for side, measured in sides.items():
        log_side(side, measured)
    return Row("many-jobs", count, len(clients), events / rate, sides)


def counts_of(value: str) -> list[int]:
    return [int(count) for count in value.split(",") if count]


def driver_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    counts, many_counts = counts_of(args.subscribers), counts_of(args.jobs)
    most = max([*counts, *many_counts, 1])
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-realtime-")))
        (tmp / "logs").mkdir()
        if args.logs:  # copied at the end, after the children stopped (the stack unwinds in reverse)
            stack.callback(shutil.copytree, tmp / "logs", args.logs, dirs_exist_ok=True)
        nofile = stack.enter_context(raised_open_file_limit(most * 4 + 1024))
        production = args.profile == "production"
        if production and not os.environ.get("REDIS_URL"):
            raise SystemExit("--profile production needs REDIS_URL (a Redis of the machine)")
        database_url = postgres_database(stack, f"bench_realtime_{os.getpid()}") if production else None
        env = bench_env(stack, tmp / "var", broker_db=BROKER_DB, database_url=database_url)
        # Every subscriber is the one benchmark user: lift the per-user socket cap for it.
        env["WEBSOCKET_MAX_PER_USER"] = str(most + 10)
        children = Children(env, tmp / "logs", whole_group=True)
        stack.callback(children.stop_all)
        uvicorn, bare, target = servers_start(children, setup_run(env, tmp, max([*many_counts, 1])))
        header_print(args, nofile, target)
        servers = Servers(psutil.Process(uvicorn.pid), psutil.Process(bare.pid))
        try:
            rows = [measure_one_job(children, tmp, target, servers, count, args) for count in counts]
            rows += [measure_many_jobs(children, tmp, target, servers, count, args) for count in many_counts]
        except RuntimeError:
            log(f"uvicorn's log:\n{children.log_tail('uvicorn', 40)}")
            log(f"bare uvicorn's log:\n{children.log_tail('uvicorn-bare', 40)}")
            raise
        server_rss = servers.project.memory_info().rss
        children.stop(uvicorn, graceful_s=15)
        children.stop(bare, graceful_s=15)
        rows_print(rows)
        goals_print(rows)
        elapsed = time.monotonic() - started
        log(
            f"\nuvicorn RSS at the end: {server_rss / 2**20:.0f} MiB. benchmark wall time: {elapsed:.0f} s; "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        if args.save:
            save(rows, args, elapsed)
    return 0


def setup_run(env: dict[str, str], tmp: Path, jobs: int) -> dict[str, Any]:
    """The benchmark's user, token, session and queued jobs (`_setup`)."""
    setup_out = tmp / "setup.json"
    subprocess.run(
        [*SELF, "_setup", "--out", str(setup_out), "--jobs", str(jobs)], env=env, cwd=ROOT, check=True
    )
    setup: dict[str, Any] = json.loads(setup_out.read_text())
    return setup


def servers_start(
    children: Children, setup: dict[str, Any]
) -> tuple[subprocess.Popen[str], subprocess.Popen[str], Target]:
    """The project's uvicorn and the bare consumer's (the same command line, another app),
    each on a free port; the sockets on them, with the authentication the project takes."""
    port, bare_port = free_port(), free_port()
    extra = ("--no-access-log", "--log-level", "warning")
    uvicorn = children.start("uvicorn", processes.web_argv(port=port, extra=extra))
    bare_argv = [
        BARE_APP if arg == processes.ASGI_APP else arg
        for arg in processes.web_argv(port=bare_port, extra=extra)
    ]
    bare = children.start("uvicorn-bare", bare_argv)
    wait_for_port(port, process=uvicorn)
    wait_for_port(bare_port, process=bare)
    origin = f"http://127.0.0.1:{port}"
    base = f"ws://127.0.0.1:{port}/v1/download/subscribe/"
    query, cookie = ws_auth(base + setup["job_id"], origin, setup["token"], setup["cookie"])
    target = Target(
        project_url=base,
        query=query,
        cookie=cookie,
        origin=origin,
        job_ids=setup["job_ids"],
        auth="?token=" if query else "session cookie",
        bare_url=f"ws://127.0.0.1:{bare_port}/bare/",
        bare_origin=f"http://127.0.0.1:{bare_port}",
    )
    return uvicorn, bare, target


def header_print(args: argparse.Namespace, nofile: int, target: Target) -> None:
    import channels_redis
    import uvicorn as uvicorn_module
    import websockets
    from django.conf import settings

    log(
        f"realtime benchmark  Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; uvicorn "
        f"{uvicorn_module.__version__} (one process each), channels_redis {channels_redis.__version__}, "
        f"websockets {websockets.__version__}; open files limit {nofile}; channel layer "
        f"{settings.CHANNEL_LAYERS['default']['BACKEND']}; profile {args.profile}"
    )
    log(
        f"one job: {args.events} events at {args.rate:g}/s; many jobs: {args.many_events} events per job "
        f"at {args.many_rate:g}/s (+{WARMUP_EVENTS} warm-up), published by "
        f"{many_publish_mode(args.many_publish)}; WebSocket auth: {target.auth}"
    )


ROWS_TABLE = Table(
    Column("shape", 9),
    Column("sockets", 7),
    Column("side", 13),
    Column("p50", 8, ".1f"),
    Column("p99", 8, ".1f"),
    Column("last p99", 8, ".1f"),
    Column("lost", 6),
    Column("skipped", 7),
    Column("terminal lost", 13),
    Column("server us", 9, ".0f"),
    Column("load", 5, ".2f"),
    Column("us / bare", 9, ".2f"),
    Column("p99 / bare", 10, ".2f"),
)


def rows_print(rows: list[Row]) -> None:
    log(
        "\ndelay from publish to receipt (ms, over every receipt; last = until the last socket had "
        "an event). server us = CPU of the side's uvicorn process per message delivered; load = its "
        "CPU s over the span of the events (over 1.0: it fell behind). / bare = project over bare "
        "consumer. Sides: project (JobConsumer), bare consumer (bench/sockets_bare.py), layer "
        "(group_send -> layer.receive in one process, no ASGI). lost = events a socket never had, nor "
        "any later one; skipped = events it missed but had a later one of (when a socket is behind, the "
        "project skips a progress event that a newer one replaces)"
    )
    ROWS_TABLE.print_header()
    for row in rows:
        bare = row.sides["bare consumer"]
        for name, side in row.sides.items():
            server_us = side.per_message_us(side.server_cpu_s)
            ROWS_TABLE.print_row(
                row.shape,
                row.subscribers,
                name,
                side.p(50),
                side.p(99),
                side.last_p(99),
                side.lost,
                side.skipped,
                side.terminal_lost if row.shape == "many-jobs" else "-",
                server_us,
                (side.server_cpu_s or float("nan")) / row.span_s,
                ratio(server_us, bare.per_message_us(bare.server_cpu_s))
                if name == "project"
                else float("nan"),
                ratio(side.p(99), bare.p(99)) if name == "project" else float("nan"),
            )


def goals_print(rows: list[Row]) -> None:
    """Issue 14's goals, each pass or MISS (printed only; the exit status does not change)."""
    log("\ngoals (one web process):")

    def goal(text: str, ok: bool) -> None:
        log(f"  {'pass' if ok else 'MISS'}  {text}")

    for row in rows:
        project, bare = row.sides["project"], row.sides["bare consumer"]
        us, bare_us = project.per_message_us(project.server_cpu_s), bare.per_message_us(bare.server_cpu_s)
        where = f"{row.shape}, {row.subscribers} socket(s)"
        goal(
            f"{where}: server CPU per message {us:.0f} us <= 1.5 x bare {bare_us:.0f} us", us <= 1.5 * bare_us
        )
        if row.shape == "many-jobs" and row.subscribers >= 1000:
            goal(f"{where}: p99 {project.p(99):.0f} ms < 250 ms", project.p(99) < 250)
            goal(f"{where}: terminal events lost {project.terminal_lost} = 0", project.terminal_lost == 0)
        if row.shape == "one-job" and row.subscribers >= 500:
            goal(
                f"{where}: p99 {project.p(99):.0f} ms < 2 x bare {bare.p(99):.0f} ms",
                project.p(99) < 2 * bare.p(99),
            )
        for name, side in row.sides.items():
            if side.publish["lag_p99_ms"] > PUBLISHER_LAG_WARN_MS:
                log(
                    f"  note  {where}, {name}: the publishers started their calls up to "
                    f"{side.publish['lag_p99_ms']:.0f} ms late (p99): they, not the server, set the pace"
                )


def save(rows: list[Row], args: argparse.Namespace, elapsed: float) -> None:
    summary = [
        {
            "shape": row.shape,
            "subscribers": row.subscribers,
            "client_procs": row.client_procs,
            **{
                f"{side.replace(' ', '_')}_{key}": value
                for side, measured in row.sides.items()
                for key, value in summarize(measured).items()
            },
        }
        for row in rows
    ]
    results_save(
        "realtime",
        {
            "events": args.events,
            "rate": args.rate,
            "many_events": args.many_events,
            "many_rate": args.many_rate,
            "rows": summary,
            "wall_s": elapsed,
        },
    )


def summarize(side: Side) -> dict[str, Any]:
    return {
        "p50_ms": side.p(50),
        "p99_ms": side.p(99),
        "max_ms": side.p(100),
        "last_p50_ms": side.last_p(50),
        "last_p99_ms": side.last_p(99),
        "lost": side.lost,
        "skipped": side.skipped,
        "terminal_lost": side.terminal_lost,
        "events_unseen": side.unseen,
        "duplicates": side.duplicates,
        "closed_by_server": side.closed,
        "receiver_cpu_s": side.receiver_cpu_s,
        "server_cpu_s": side.server_cpu_s,
        "server_us_per_message": side.per_message_us(side.server_cpu_s),
        "connect_s": side.connect_s,
        "publish_call_p50_ms": side.publish["call_p50_ms"],
        "publish_call_p99_ms": side.publish["call_p99_ms"],
        "publish_lag_p99_ms": side.publish["lag_p99_ms"],
        "publisher_cpu_s": side.publish["cpu_s"],
    }


def log_side(name: str, side: Side) -> None:
    log(
        f"  {name}: p50 {side.p(50):.1f} ms, p99 {side.p(99):.1f} ms, max {side.p(100):.1f} ms; "
        f"lost {side.lost} of {side.expected} ({side.unseen} events reached no subscriber), skipped "
        f"{side.skipped}, "
        f"duplicates {side.duplicates}, sockets closed early {side.closed}; subscribed in "
        f"{side.connect_s:.1f} s; publish call p50 {side.publish['call_p50_ms']:.2f} ms, "
        f"p99 {side.publish['call_p99_ms']:.2f} ms, started late p99 {side.publish['lag_p99_ms']:.1f} ms; "
        f"publishers' CPU {side.publish['cpu_s']:.1f} s; server CPU {side.server_cpu_s or 0:.1f} s, "
        f"clients' CPU {side.receiver_cpu_s:.1f} s"
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
    parser.add_argument(
        "--subscribers", default="1,100,1000", help="one job: socket counts (default 1,100,1000; '' for none)"
    )
    parser.add_argument(
        "--events", type=int, default=200, help="one job: events per measurement (default 200)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="one job: events per second (default 20)")
    parser.add_argument(
        "--jobs", default="1000", help="many jobs: socket counts, one job each (default 1000; '' for none)"
    )
    parser.add_argument("--many-events", type=int, default=40, help="many jobs: events per job (default 40)")
    parser.add_argument(
        "--many-rate", type=float, default=4.0, help="many jobs: events per second per job (default 4)"
    )
    parser.add_argument(
        "--many-publish",
        choices=("auto", "group_send", "pipeline"),
        default="auto",
        help="many jobs: how the publishers send each event (default: pipeline with the pub/sub "
        "layer, else group_send; see publish_many)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="WebSocket client processes (default: 1 up to 100 sockets, else 2)",
    )
    parser.add_argument(
        "--profile",
        choices=("embedded", "production"),
        default="embedded",
        help="embedded: SQLite and the embedded Redis (the default); production: a throwaway "
        "PostgreSQL database and the Redis of REDIS_URL",
    )
    parser.add_argument(
        "--no-save", dest="save", action="store_false", help="do not write bench/results/*.json"
    )
    parser.add_argument("--logs", type=Path, help="copy the processes' logs to this directory at the end")
    args = parser.parse_args(argv)
    run_until_interrupted(lambda: driver_main(args))


def sub(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"bench.sockets {argv[0]}")
    parser.add_argument("--out", type=Path)
    if argv[0] == "_setup":
        parser.add_argument("--jobs", type=int, default=1)
        setup_args = parser.parse_args(argv[1:])
        setup_main(setup_args.out, setup_args.jobs)
        return
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--count", type=int)
    if argv[0] == "_clients":
        parser.add_argument("--url", default="")
        parser.add_argument("--urls", help="a JSON file: the sockets' URLs, in turn")
        parser.add_argument("--cookie", default="")
        parser.add_argument("--origin", required=True)
        parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
        run_async(clients_main, parser.parse_args(argv[1:]))
    elif argv[0] == "_baseline":
        parser.add_argument("--group", required=True)
        django_setup()
        run_async(baseline_main, parser.parse_args(argv[1:]))
    elif argv[0] == "_publish":
        parser.add_argument("mode", choices=("project", "baseline", "bare"))
        parser.add_argument(
            "target", help="the job id (project) or the group (baseline); with --many, a JSON file of either"
        )
        parser.add_argument("--many", action="store_true", help="many targets at once (asyncio)")
        parser.add_argument("--publish", choices=("group_send", "pipeline"), default="group_send")
        parser.add_argument("--rate", type=float, required=True)
        django_setup()
        publish_main(parser.parse_args(argv[1:]))
    else:
        raise SystemExit(f"unknown part {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
