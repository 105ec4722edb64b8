"""What the `downloads` command shows: results on stdout (plain, or JSON for scripts), and
on stderr a live bar on a terminal, a line per change otherwise, errors always."""

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import errors
from .models import DownloadResult, JobStatus
from .models import Progress as JobProgress

ProgressCallback = Callable[[JobProgress], None]


class Ui:
    """Results on stdout (plain or JSON); on stderr, a live progress bar when stderr is a
    terminal, else a line for each change of a job's state; nothing but errors with --quiet."""

    def __init__(self, *, json_output: bool, quiet: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json = json_output
        self.quiet = quiet
        self.stdout = stdout
        self.stderr = stderr
        self.console = Console(file=stderr, highlight=False)
        self.bar = not quiet and stderr.isatty()
        self.notes = not quiet and not self.bar

    def result(self, text: str, data: Any) -> None:
        if self.json:
            print(json.dumps(data, default=str), file=self.stdout)
        elif text:
            print(text, file=self.stdout)
        self.stdout.flush()

    def note(self, text: str) -> None:
        if self.bar:
            self.console.print(text)
        elif self.notes:
            print(text, file=self.stderr, flush=True)

    def error(self, exc: errors.ApiError) -> None:
        """`error: CODE: message` on stderr; with --json, also the API's error envelope on
        stdout, with the job it is about and the HTTP status when there are any."""
        where = f" (job {exc.job_id})" if exc.job_id else ""
        print(f"error: {exc.code}: {exc.message}{where}", file=self.stderr, flush=True)
        if self.json:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message, **exc.details}
            if exc.job_id is not None:
                error["job_id"] = exc.job_id
            if exc.status is not None:
                error["http_status"] = exc.status
            print(json.dumps({"success": False, "error": error}), file=self.stdout, flush=True)

    @contextlib.contextmanager
    def tracker(self, job_id: str) -> Iterator[ProgressCallback]:
        """An `on_progress` callback that shows a job and then its file's transfer."""
        if self.bar:
            with _Bar(self.console) as bar:
                yield bar.update
        elif self.notes:
            yield _Notes(job_id, self.note).update
        else:
            yield lambda progress: None


class _Bar:
    """One line: what is happening, the bar, percent, bytes, speed and time left."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.phase = ""

    def __enter__(self) -> "_Bar":
        self.progress.start()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, event: JobProgress) -> None:
        assert self.task is not None
        description = _describe(event)
        if event.phase != self.phase:
            # Speed and time left are measured anew for each phase.
            self.phase = event.phase
            self.progress.reset(self.task, total=event.bytes_total, completed=event.bytes_done or 0)
        self.progress.update(
            self.task, description=description, total=event.bytes_total, completed=event.bytes_done or 0
        )


def _describe(event: JobProgress) -> str:
    if event.phase == "downloading":
        return "downloading"
    via = " (polling)" if event.transport == "polling" else ""
    job = event.job
    if event.phase == "queued" and job is not None and job.attempts:
        reason = f": {job.error.code}" if job.error else ""
        return f"queued, attempt {job.attempts + 1}{reason}{via}"
    return f"{'preparing' if event.phase == 'processing' else 'queued'}{via}"


class _Notes:
    """Without a terminal: a line when the job's status, attempt or transport changes."""

    def __init__(self, job_id: str, note: Callable[[str], None]) -> None:
        self.job_id = job_id
        self.note = note
        self.last: tuple[object, ...] = ()

    def update(self, event: JobProgress) -> None:
        attempts = event.job.attempts if event.job else None
        key = (event.phase, attempts, event.transport)
        if key == self.last:
            return
        self.last = key
        if event.phase == "downloading":
            size = f" ({event.bytes_total} bytes)" if event.bytes_total is not None else ""
            self.note(f"{self.job_id} completed; downloading{size}")
        else:
            via = f" (following by {event.transport})" if event.transport else ""
            self.note(f"{self.job_id} {_describe(event).replace(' (polling)', '')}{via}")


def status_line(job: JobStatus) -> str:
    parts = [job.job_id, job.status, f"{job.progress}%"]
    if job.bytes_done is not None and job.bytes_total:
        parts.append(f"{job.bytes_done}/{job.bytes_total} bytes")
    if job.file_id is not None:
        parts.append(f"file {job.file_id}")
    if job.priority:
        parts.append(job.priority)
    if job.file_name:
        parts.append(repr(job.file_name))
    if job.error is not None:
        parts.append(f"{job.error.code}: {job.error.message}")
    if job.created_at is not None:
        parts.append(job.created_at.isoformat(timespec="seconds"))
    return "  ".join(parts)


_COLUMNS = ("JOB ID", "STATUS", "PROGRESS", "FILE", "PRIORITY", "CREATED")


def jobs_table(jobs: Sequence[JobStatus]) -> str:
    """The jobs as a table with a header row, columns aligned."""
    rows = [_COLUMNS] + [
        (
            job.job_id,
            job.status,
            f"{job.progress}%",
            "" if job.file_id is None else str(job.file_id),
            job.priority or "",
            job.created_at.isoformat(timespec="seconds") if job.created_at else "",
        )
        for job in jobs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def result_data(result: DownloadResult) -> dict[str, Any]:
    return {**asdict(result), "path": str(result.path)}


def log_to(ui: Ui) -> None:
    """The library's warnings (a retry, a rate limit waited out) go to stderr at once,
    unless --quiet."""
    logger = logging.getLogger("downloads_client")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    if ui.quiet:
        logger.addHandler(logging.NullHandler())
    elif ui.bar:
        logger.addHandler(RichHandler(console=ui.console, show_time=False, show_path=False, show_level=False))
    else:
        logger.addHandler(logging.StreamHandler(ui.stderr))
