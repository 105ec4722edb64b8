"""The `downloads` command: get a file by id, or look after jobs, from a terminal or a script.

Exit status: 0 done (the file saved and verified); 1 the job failed, or the API refused
(the error code and message on stderr); 2 a usage error; 130 interrupted (Ctrl-C).
"""

import argparse
import contextlib
import json
import logging
import os
import sys
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
from .cli_webhooks import webhooks_commands_add
from .client import VERSION, Client
from .models import PRIORITIES, DownloadResult, JobStatus
from .models import Progress as JobProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_URL = "http://127.0.0.1:8000"

ProgressCallback = Callable[[JobProgress], None]


class UsageError(Exception):
    pass


# --- arguments -------------------------------------------------------------------------------


def _file_id(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file id: {value!r} (a positive integer)") from None
    if number <= 0:  # how large an id may be is the server's to say
        raise argparse.ArgumentTypeError(f"not a file id: {value!r} (a positive integer)")
    return number


def _common(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. After it, an option
    given only before it must not be reset to its default: hence SUPPRESS there."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=default(None),
        help=f"the service's base URL (default: $DOWNLOADS_URL, else {DEFAULT_URL})",
    )
    common.add_argument("--token", default=default(None), help="your API token (default: $DOWNLOADS_TOKEN)")
    common.add_argument("--json", action="store_true", default=default(False), help="print JSON on stdout")
    common.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress bar, no notes"
    )
    common.add_argument(
        "--no-websocket",
        action="store_true",
        default=default(False),
        help="follow jobs by polling only (a proxy that breaks WebSockets)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="downloads",
        description="Fetch files through the download service.",
        parents=[_common(suppress=False)],
        epilog="Exit status: 0 done, 1 the job or a request failed, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common(suppress=True)

    get = commands.add_parser(
        "get",
        parents=[common],
        help="start a job for a file, follow it, save the file",
        description="Start a job for FILE_ID, follow it (a progress bar on a terminal), then save the "
        "file and verify its size and sha256. Ctrl-C cancels the job.",
    )
    get.add_argument("file_id", type=_file_id, metavar="FILE_ID")
    get.add_argument("-o", "--output", metavar="PATH", help="the file, or a folder (default: ./<its name>)")
    get.add_argument("--priority", choices=PRIORITIES, default="normal")
    get.add_argument(
        "--email", action="store_true", help="e-mail me when the job completes or fails (notify)"
    )
    get.add_argument(
        "--detach",
        action="store_true",
        help="start the job, print its id and exit (collect it later with `downloads fetch JOB_ID`)",
    )
    get.set_defaults(handler=_get)

    fetch = commands.add_parser(
        "fetch",
        parents=[common],
        help="save the file of a job (waits for it if it is still running)",
        description="Save the file of JOB_ID, waiting for the job first if it is still queued or "
        "processing. Ctrl-C stops waiting; the job goes on.",
    )
    fetch.add_argument("job_id", metavar="JOB_ID")
    fetch.add_argument("-o", "--output", metavar="PATH", help="the file, or a folder (default: ./<its name>)")
    fetch.set_defaults(handler=_fetch)

    status = commands.add_parser("status", parents=[common], help="a job's status")
    status.add_argument("job_id", metavar="JOB_ID")
    status.set_defaults(handler=_status)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or processing job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(handler=_cancel)

    listing = commands.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--active", action="store_true", help="only the queued and processing ones")
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N jobs (0: all; default 50)"
    )
    listing.set_defaults(handler=_list)

    webhooks_commands_add(commands, common)
    return parser


# --- output ----------------------------------------------------------------------------------


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
        where = f" (job {exc.job_id})" if exc.job_id else ""
        print(f"error: {exc.code}: {exc.message}{where}", file=self.stderr, flush=True)
        if self.json:
            body = {"code": exc.code, "message": exc.message, "status": exc.status, "job_id": exc.job_id}
            print(json.dumps({"error": {**body, **exc.details}}), file=self.stdout, flush=True)

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


def _status_line(job: JobStatus) -> str:
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


def _result_data(result: DownloadResult) -> dict[str, Any]:
    return {**asdict(result), "path": str(result.path)}


# --- commands --------------------------------------------------------------------------------


def _get(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    job = client.initiate(
        args.file_id,
        priority=args.priority,
        retry_rate_limited=True,
        notify=["email"] if args.email else None,
    )
    if args.detach:
        ui.result(job.job_id, job.raw)
        return EXIT_OK
    ui.note(f"{job.job_id} started for file {args.file_id} ({args.priority})")
    finished = False
    try:
        with ui.tracker(job.job_id) as on_progress:
            client.wait(
                job.job_id,
                websocket_url=job.websocket_url,
                polling_interval_s=job.polling_interval_s,
                on_progress=on_progress,
            )
            finished = True
            result = client.fetch(job.job_id, args.output, on_progress=on_progress)
    except KeyboardInterrupt:
        if not finished:
            ui.note(f"interrupted: cancelling {job.job_id}")
            if client.cancel_quietly(job.job_id):
                ui.note(f"{job.job_id} cancelled")
        return EXIT_INTERRUPTED
    _saved(ui, result)
    return EXIT_OK


def _fetch(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    try:
        with ui.tracker(args.job_id) as on_progress:
            client.wait(args.job_id, on_progress=on_progress)
            result = client.fetch(args.job_id, args.output, on_progress=on_progress)
    except KeyboardInterrupt:
        ui.note(f"interrupted; {args.job_id} goes on")
        return EXIT_INTERRUPTED
    _saved(ui, result)
    return EXIT_OK


def _saved(ui: Ui, result: DownloadResult) -> None:
    ui.note(f"saved {result.path} ({result.size} bytes, sha256 {result.sha256})")
    ui.result(str(result.path), _result_data(result))


def _status(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    job = client.status(args.job_id)
    ui.result(_status_line(job), job.raw)
    return EXIT_OK


def _cancel(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    client.cancel(args.job_id)
    ui.result(f"{args.job_id} cancelled", {"job_id": args.job_id, "status": "cancelled"})
    return EXIT_OK


def _list(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    jobs: list[JobStatus] = []
    for job in client.jobs(active=args.active):
        jobs.append(job)
        if args.limit and len(jobs) >= args.limit:
            break
    ui.result("\n".join(_status_line(job) for job in jobs), [job.raw for job in jobs])
    return EXIT_OK


# --- main ------------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    url = args.url or os.environ.get("DOWNLOADS_URL") or DEFAULT_URL
    token = args.token or os.environ.get("DOWNLOADS_TOKEN")
    if not token:
        parser.error("no API token: pass --token or set DOWNLOADS_TOKEN (`make run` prints the demo user's)")
    ui = Ui(json_output=args.json, quiet=args.quiet, stdout=stdout, stderr=stderr)
    _log_to(ui)
    try:
        client = Client(url, token, use_websocket=not args.no_websocket)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            handler: Callable[[Client, argparse.Namespace, Ui], int] = args.handler
            return handler(client, args, ui)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except errors.ValidationError as exc:
        ui.error(exc)
        for field, messages in exc.fields.items():
            print(f"  {field}: {' '.join(map(str, messages))}", file=stderr)
        return EXIT_USAGE
    except errors.ApiError as exc:
        ui.error(exc)
        return EXIT_FAILED


def _log_to(ui: Ui) -> None:
    """The library's warnings (a rate limit waited out) go to stderr, unless --quiet."""
    logger = logging.getLogger("downloads_client")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    if ui.quiet:
        logger.addHandler(logging.NullHandler())
    elif ui.bar:
        logger.addHandler(RichHandler(console=ui.console, show_time=False, show_path=False))
    else:
        logger.addHandler(logging.StreamHandler(ui.stderr))
