"""Redis servers a test starts and stops itself: a plain one (optionally with its
append-only file), and a Sentinel group (a master, a replica, three sentinels), each a real
`redis-server` process on a free loopback port, in a directory of the test's."""

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from devtools.servers import free_port, wait_for_port


class RedisServer:
    """One `redis-server`. `stop()` kills it (SIGKILL: a crash, not a shutdown), `start()`
    starts it again on the same port and directory, with what its AOF kept, if any."""

    def __init__(self, directory: Path, *, appendonly: bool = False, replica_of: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        argv += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            argv += ["--appendfsync", "always"]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return argv

    def start(self) -> "RedisServer":
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, process=self.process)
        deadline = time.monotonic() + 30
        while True:  # the port opens before an AOF is loaded
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


class SentinelGroup:
    """A master, a replica of it and three sentinels that watch them under `master_name`,
    a failover after the master is silent for one second."""

    def __init__(self, directory: Path, master_name: str = "downloads") -> None:
        self.directory = directory
        self.master_name = master_name
        self.master = RedisServer(directory / "master")
        self.replica = RedisServer(directory / "replica", replica_of=self.master.port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": self.master_name,
        }

    def start(self) -> "SentinelGroup":
        self.master.start()
        self.replica.start()
        command = ["redis-sentinel"] if shutil.which("redis-sentinel") else ["redis-server"]
        for number, port in enumerate(self.sentinel_ports):
            directory = self.directory / f"sentinel-{number}"
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "sentinel.conf"  # a sentinel rewrites its own configuration
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            argv = [*command, str(config)] + ([] if command == ["redis-sentinel"] else ["--sentinel"])
            log = (directory / "sentinel.log").open("ab")
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.sentinels.append(process)
            wait_for_port(port, process=process)
        self._wait(lambda: all(self._replicas_seen(port) for port in self.sentinel_ports), "the replica seen")
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def _replicas_seen(self, port: int) -> bool:
        try:
            replicas = self._sentinel(port).sentinel_slaves(self.master_name)
        except redis.RedisError:
            return False
        return bool(replicas) and all("s_down" not in str(replica["flags"]) for replica in replicas)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers says."""
        for port in self.sentinel_ports:
            try:
                address = self._sentinel(port).sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError:
                continue
            if isinstance(address, tuple):
                return int(address[1])
        return None

    def kill_master(self) -> None:
        """The master dies (SIGKILL); returns once the sentinels have made the replica master."""
        self.master.stop()
        self._wait(lambda: self.master_port() == self.replica.port, "the replica promoted", timeout_s=60)

    def _wait(self, check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"Sentinel: not within {timeout_s} s: {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.sentinels = []
        self.replica.stop()
        self.master.stop()
