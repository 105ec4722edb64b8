"""The `downloads` command: get a file by id, or look after jobs, from a terminal or a script.

Exit status: 0 done (the file saved and verified); 1 the job failed, or the API refused
(the error code and message on stderr); 2 a usage error; 3 the service could not be
reached (or stayed unavailable) after the retries; 130 interrupted (Ctrl-C).

Each command is a function that adds its subparser (`_add_<name>`, listed in COMMANDS) and
one that runs it with the client and the output (`_<name>`); a new command adds both.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import errors
from .cli_webhooks import webhooks_commands_add
from .client import VERSION, Client
from .models import PRIORITIES, DownloadResult, JobStatus
from .ui import Ui, jobs_table, log_to, result_data, status_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_URL = "http://127.0.0.1:8000"

Handler = Callable[[Client, argparse.Namespace, Ui], int]
Subparsers = Any  # argparse's _SubParsersAction, private


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


def _add_get(commands: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _add_fetch(commands: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _add_status(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[common], help="a job's status")
    status.add_argument("job_id", metavar="JOB_ID")
    status.set_defaults(handler=_status)


def _add_cancel(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or processing job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(handler=_cancel)


def _add_list(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    listing = commands.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--active", action="store_true", help="only the queued and processing ones")
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N jobs (0: all; default 50)"
    )
    listing.set_defaults(handler=_list)


COMMANDS: list[Callable[[Subparsers, argparse.ArgumentParser], None]] = [
    _add_get,
    _add_fetch,
    _add_status,
    _add_cancel,
    _add_list,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="downloads",
        description="Fetch files through the download service.",
        parents=[_common(suppress=False)],
        epilog="Exit status: 0 done, 1 the job or a request failed, 2 usage error, "
        "3 the service unreachable, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common(suppress=True)
    for add in COMMANDS:
        add(commands, common)
    webhooks_commands_add(commands, common)
    return parser


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
    ui.result(str(result.path), result_data(result))


def _status(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    job = client.status(args.job_id)
    ui.result(status_line(job), job.raw)
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
    empty = "No active downloads." if args.active else "No downloads yet."
    ui.result(jobs_table(jobs) if jobs else empty, [job.raw for job in jobs])
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
    log_to(ui)
    try:
        client = Client(url, token, use_websocket=not args.no_websocket)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            handler: Handler = args.handler
            return handler(client, args, ui)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except errors.ValidationError as exc:
        ui.error(exc)
        for field, messages in exc.fields.items():
            print(f"  {field}: {' '.join(map(str, messages))}", file=stderr)
        return EXIT_USAGE
    except (errors.ConnectionFailed, errors.ServiceUnavailable) as exc:
        ui.error(exc)
        return EXIT_UNREACHABLE
    except errors.ApiError as exc:
        ui.error(exc)
        return EXIT_FAILED
