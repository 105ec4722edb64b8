"""What a worker process sets for itself when it starts (downloads_project/celery.py)."""

import resource
import subprocess
import sys


def test_the_open_files_limit_is_raised_towards_the_hard_limit():
    """A process started with a desktop's 256 open files gets room for hundreds of jobs."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import resource; from downloads_project.celery import open_files_limit_raise; "
        "print(open_files_limit_raise(4096), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", script], preexec_fn=low_limit, capture_output=True, text=True, check=True
    ).stdout.split()

    expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    assert [int(value) for value in out] == [expected, expected]
