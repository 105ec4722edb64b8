"""An attempt's time limit, kept by the code that does the work.

Celery's thread pool, which runs a worker's jobs, has no soft or hard time limit of its
own (the prefork pool's signals cannot reach a thread). So the attempt carries its
deadline: the staging loop checks it between chunks, the http origin between the network
reads that make up a chunk (a trickling origin never completes a chunk), and every wait
of the attempt's own (for room in the part budget) is bounded by it. A socket that goes
silent is bounded by its own timeout (ORIGIN_READ_TIMEOUT_S, botocore's read timeout).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.errors import ErrorCode, JobError


@dataclass(frozen=True)
class Deadline:
    """The `time.monotonic()` moment `at` by which an attempt must have ended, `limit_s`
    after it started."""

    at: float
    limit_s: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, limit_s: float, *, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(at=clock() + limit_s, limit_s=limit_s, clock=clock)

    def remaining_s(self) -> float:
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.clock() >= self.at

    def exceeded(self, *, origin_fault: bool) -> JobError:
        """The attempt's DOWNLOAD_TIMEOUT; `origin_fault` if the origin's slowness spent
        the time (the breaker counts it against the origin)."""
        return JobError(
            ErrorCode.DOWNLOAD_TIMEOUT,
            f"File download exceeded {self.limit_s:g} s",
            origin_fault=origin_fault,
        )

    def check(self, *, origin_fault: bool) -> None:
        if self.passed():
            raise self.exceeded(origin_fault=origin_fault)
