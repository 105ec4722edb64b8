"""What a worker process holds of the files it stages: the byte budget of its S3 parts
(memory, then temporary files in the spool, then a wait within the job's deadline), the
parts spilled to the spool and given back, whatever way a write ends, and the allocator's
tuning. The S3 cases run against the moto endpoint; the budget and the upload threads are
the process's own, made anew from each test's settings and put back after it."""

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from jobs.errors import ErrorCode, JobError
from jobs.parts import StoredPart
from jobs.transfer import part_buffers, storage
from jobs.transfer.deadline import Deadline
from jobs.transfer.origins import get_origin, synthetic_chunks
from jobs.transfer.origins.local import SyntheticOrigin
from jobs.transfer.part_buffers import PartBudget, PartBuffer
from jobs.transfer.staging import Checkpoint, NoHooks, stage_file
from jobs.transfer.storage import staged_write_open
from tests.support.origin_server import FileScript, OriginServer
from tests.support.s3 import UploadCalls

MiB = 1024 * 1024
PART = 5 * MiB
FILE_ID = 71600


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.fixture
def budget_of(settings: Any, monkeypatch: pytest.MonkeyPatch, spool_dir: Path) -> Callable[..., PartBudget]:
    """Makes the process's part budget anew from STAGING_MEMORY_BYTES and STAGING_SPOOL_BYTES
    as given, its spool in `spool_dir`. The process's own budget comes back after the test:
    a tiny one left behind would make every later S3 test spill or wait."""

    def make(*, memory_bytes: int, spool_bytes: int) -> PartBudget:
        settings.STAGING_MEMORY_BYTES = memory_bytes
        settings.STAGING_SPOOL_BYTES = spool_bytes
        settings.STAGING_SPOOL_DIR = str(spool_dir)
        monkeypatch.setattr(part_buffers, "_budget", None)
        budget = part_buffers.part_budget()
        assert (budget.memory_bytes, budget.spool_bytes) == (memory_bytes, spool_bytes)
        return budget

    return make


def spooled_files(directory: Path) -> int:
    """Files of `directory` that this process holds open. A spooled part is a temporary file
    without a name (or with its name already removed): it shows only among the process's
    open files."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with suppress(OSError):
            count += os.readlink(fd).startswith(f"{directory}/")
    return count


def held(budget: PartBudget) -> tuple[int, int]:
    return budget.memory_used, budget.spool_used


def synthetic(size: int) -> bytes:
    return b"".join(synthetic_chunks(FILE_ID, size, MiB))


class InThread:
    """`work` run in a thread of its own, as a job runs in a worker thread: `done` is set
    once it returned (at `ended_at`), `failures` holds what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.done = threading.Event()
        self.ended_at = 0.0
        self.failures: list[BaseException] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            self.failures.append(exc)
            return
        self.ended_at = time.monotonic()
        self.done.set()


# --- the budget ----------------------------------------------------------------------------


def test_a_part_reserves_memory_while_there_is_room_then_spool():
    budget = PartBudget(memory_bytes=10, spool_bytes=20)

    assert budget.reserve(6, deadline=None) == "memory"
    assert budget.reserve(4, deadline=None) == "memory"
    assert budget.reserve(5, deadline=None) == "spool"  # memory is full: the whole part to disk
    assert held(budget) == (10, 5)

    budget.give("memory", 4)
    assert budget.reserve(4, deadline=None) == "memory"
    assert held(budget) == (10, 5)


def test_a_reservation_waits_for_room_and_is_woken_by_give():
    budget = PartBudget(memory_bytes=0, spool_bytes=10)
    budget.reserve(8, deadline=None)
    taking = InThread(lambda: budget.reserve(5, deadline=Deadline.after(5)))

    assert not taking.done.wait(0.3)  # 8 + 5 > 10: it waits, holding nothing
    assert held(budget) == (0, 8)
    budget.give("spool", 8)

    assert taking.done.wait(2), f"give() did not wake the waiting reservation: {taking.failures}"
    assert held(budget) == (0, 5)


def test_without_a_spool_a_reservation_waits_for_memory():
    budget = PartBudget(memory_bytes=10, spool_bytes=0)
    budget.reserve(8, deadline=None)
    taking = InThread(lambda: budget.reserve(5, deadline=Deadline.after(5)))

    assert not taking.done.wait(0.3)
    budget.give("memory", 8)

    assert taking.done.wait(2), taking.failures
    assert held(budget) == (5, 0)


def test_a_reservation_past_the_deadline_is_download_timeout_not_the_origins_fault():
    budget = PartBudget(memory_bytes=0, spool_bytes=10)
    budget.reserve(10, deadline=None)
    deadline = Deadline.after(0.4)

    started = time.monotonic()
    with pytest.raises(JobError) as caught:
        budget.reserve(1, deadline=deadline)
    waited_s = time.monotonic() - started

    error = caught.value
    assert (error.code, error.message, error.origin_fault, error.retryable) == (
        ErrorCode.DOWNLOAD_TIMEOUT,
        "File download exceeded 0.4 s",
        False,  # the wait was for room to store, not for the origin
        False,
    )
    assert 0.35 <= waited_s < 2, waited_s
    assert held(budget) == (0, 10)  # nothing taken


def test_a_reservation_with_its_deadline_passed_raises_without_waiting():
    now = [100.0]
    deadline = Deadline.after(5, clock=lambda: now[0])
    budget = PartBudget(memory_bytes=0, spool_bytes=10)
    budget.reserve(10, deadline=None)
    now[0] = 105.0

    started = time.monotonic()
    with pytest.raises(JobError) as caught:
        budget.reserve(1, deadline=deadline)

    assert caught.value.code == ErrorCode.DOWNLOAD_TIMEOUT
    assert time.monotonic() - started < 0.1


def test_a_part_larger_than_the_whole_spool_is_taken_once_the_spool_is_empty():
    budget = PartBudget(memory_bytes=0, spool_bytes=10)
    budget.reserve(4, deadline=None)
    taking = InThread(lambda: budget.reserve(25, deadline=Deadline.after(5)))

    assert not taking.done.wait(0.3)  # not while another part holds some of it
    budget.give("spool", 4)

    assert taking.done.wait(2), taking.failures
    assert held(budget) == (0, 25)


def test_parts_that_began_always_finish_however_many_wait(spool_dir: Path):
    """Each part reserves its room whole before its first byte: two parts that began fill
    to their end, while a third, which found no room, waits holding nothing (parts that each
    held part of the room and waited for more would wait on each other for ever)."""
    budget = PartBudget(memory_bytes=2 * MiB, spool_bytes=2 * MiB)
    first = PartBuffer(budget, reserve=2 * MiB, spool_dir=str(spool_dir), deadline=Deadline.after(5))
    second = PartBuffer(budget, reserve=2 * MiB, spool_dir=str(spool_dir), deadline=Deadline.after(5))
    third: list[PartBuffer] = []
    waiting = InThread(
        lambda: third.append(
            PartBuffer(budget, reserve=2 * MiB, spool_dir=str(spool_dir), deadline=Deadline.after(5))
        )
    )

    for part in (first, second):
        for _ in range(2):
            part.append(b"p" * MiB)  # never waits: its room is reserved
    assert (first.place, second.place) == ("memory", "spool")
    assert spooled_files(spool_dir) == 1
    assert not waiting.done.wait(0.3)
    assert held(budget) == (2 * MiB, 2 * MiB)
    assert first.body().read() == second.body().read() == b"p" * 2 * MiB

    first.release()
    assert waiting.done.wait(2), waiting.failures
    assert third[0].place == "memory"
    second.release()
    third[0].release()
    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0


# --- S3 parts spilled to the spool --------------------------------------------------------


class Sampling(NoHooks):
    """Counts the spool's files after each chunk; keeps the upload and the parts recorded,
    as a job's hooks would, for a later attempt to resume."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.most_spooled = 0
        self.upload_id = ""
        self.validator = ""
        self.parts: list[StoredPart] = []

    @property
    def recorded(self) -> list[int]:
        return [part.number for part in self.parts]

    def upload_opened(self, **kwargs: Any) -> None:
        self.upload_id, self.validator = kwargs["upload_id"], kwargs["validator"]

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        self.most_spooled = max(self.most_spooled, spooled_files(self.spool_dir))

    def part_stored(self, *, parts: Sequence[StoredPart]) -> None:
        self.parts = list(parts)


def test_parts_spill_to_the_spool_when_memory_is_short_and_the_file_is_stored_whole(
    bucket, s3_storage, s3_key, budget_of, spool_dir, monkeypatch
):
    """STAGING_MEMORY_BYTES is smaller than a part: each part moves to a file in
    STAGING_SPOOL_DIR, which stays there while the part waits for its (slow) upload."""
    budget = budget_of(memory_bytes=2 * MiB, spool_bytes=64 * MiB)
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.4)
    size = 3 * PART + 123
    hooks = Sampling(spool_dir)

    staged = stage_file(
        origin=SyntheticOrigin(size_bytes=size, rate_bps=0), file_id=FILE_ID, key=s3_key, hooks=hooks
    )

    expected = synthetic(size)
    assert (staged.size, staged.sha256) == (size, hashlib.sha256(expected).hexdigest())
    assert bucket.read(s3_key)["Body"].read() == expected
    assert hooks.most_spooled >= 2  # parts waiting for their uploads, each in a file of the spool
    assert len(calls.calls) == 4
    assert hooks.recorded == [1, 2, 3]
    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0
    assert list(spool_dir.iterdir()) == []
    assert bucket.open_uploads(s3_key) == []


def test_an_aborted_write_gives_back_its_parts_and_their_files(
    bucket, s3_storage, s3_key, budget_of, spool_dir, monkeypatch
):
    budget = budget_of(memory_bytes=2 * MiB, spool_bytes=64 * MiB)
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.5)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART, parts_in_flight=4)
    content = synthetic(2 * PART + 3 * MiB)
    for offset in range(0, len(content), MiB):
        write.write(content[offset : offset + MiB])

    # Two parts handed over and uploading, a third being filled: all three in the spool,
    # each with the room of a whole part reserved.
    assert spooled_files(spool_dir) == 3
    assert held(budget) == (0, 3 * PART)
    write.abort()

    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0
    assert list(spool_dir.iterdir()) == []
    assert calls.active == 0
    assert bucket.open_uploads(s3_key) == []
    assert not bucket.has(s3_key)


def test_a_job_whose_part_fails_gives_back_every_part_without_aborting_its_upload(
    bucket, s3_storage, s3_key, budget_of, spool_dir, monkeypatch
):
    """S3 refuses part 2 at once, while the origin (20 MiB/s) is still sending part 3: the
    attempt ends STORAGE_ERROR there and leaves its upload to a later attempt (stage_file
    does not abort it). The part it was filling is given back all the same: a worker that
    kept it would lose that much of its budget for good."""
    budget = budget_of(memory_bytes=2 * MiB, spool_bytes=64 * MiB)
    UploadCalls(s3_storage, monkeypatch, refused=frozenset({2}))

    with pytest.raises(JobError) as caught:
        stage_file(
            origin=SyntheticOrigin(size_bytes=6 * PART, rate_bps=20 * MiB),
            file_id=FILE_ID,
            key=s3_key,
            hooks=NoHooks(),
        )

    assert caught.value.code == ErrorCode.STORAGE_ERROR
    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0
    uploads = bucket.open_uploads(s3_key)
    assert len(uploads) == 1  # the later attempt's to resume, or the job's to abort
    storage.stored_file_delete(s3_key, upload_id=uploads[0])


def test_a_job_whose_origin_drops_mid_part_gives_back_the_part_it_was_filling(
    bucket, s3_storage, s3_key, budget_of, spool_dir, origin: OriginServer, settings
):
    """The origin drops the connection at half the file, in the middle of part 3: the
    attempt ends NETWORK_ERROR with parts 1 and 2 stored, and holds nothing of part 3. The
    retry resumes after the stored parts, and gives everything back as it ends."""
    budget = budget_of(memory_bytes=2 * MiB, spool_bytes=64 * MiB)
    settings.STAGING_CHUNK_BYTES = 256 * 1024
    script = origin.add(FILE_ID, FileScript(size=5 * PART, faults=["drop"]))
    hooks = Sampling(spool_dir)

    with pytest.raises(JobError) as caught:
        stage_file(origin=get_origin(), file_id=FILE_ID, key=s3_key, hooks=hooks)

    assert caught.value.code == ErrorCode.NETWORK_ERROR
    assert hooks.recorded == [1, 2]
    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0

    checkpoint = Checkpoint(upload_id=hooks.upload_id, parts=tuple(hooks.parts), validator=hooks.validator)
    staged = stage_file(
        origin=get_origin(), file_id=FILE_ID, key=s3_key, hooks=NoHooks(), checkpoint=checkpoint
    )

    assert (staged.size, staged.resumed_bytes, staged.sha256) == (5 * PART, 2 * PART, script.sha256(FILE_ID))
    assert bucket.read(s3_key)["Body"].read() == script.content(FILE_ID)
    assert held(budget) == (0, 0)
    assert bucket.open_uploads(s3_key) == []


def test_without_a_spool_a_second_write_waits_for_the_first_part_to_be_uploaded(
    bucket, s3_storage, budget_of, spool_dir, monkeypatch
):
    """STAGING_SPOOL_BYTES=0 and less memory than a part: nothing goes to disk. The first
    write's part, alone, fills the memory past the budget (it never waits for room only it
    could give back); the second write, in another thread, waits until that part is
    uploaded, rather than hold more."""
    budget = budget_of(memory_bytes=MiB, spool_bytes=0)
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 1.0)
    first_key, second_key = (f"downloads/1/job_{uuid.uuid4().hex}-1" for _ in range(2))
    first = staged_write_open(
        first_key, content_type="text/plain", part_bytes=PART, deadline=Deadline.after(5)
    )
    second = staged_write_open(
        second_key, content_type="text/plain", part_bytes=PART, deadline=Deadline.after(5)
    )
    first_content, second_content = synthetic(PART + 10), synthetic(2 * MiB)
    for offset in range(0, PART, MiB):
        first.write(first_content[offset : offset + MiB])
    assert held(budget) == (PART, 0)  # handed over, uploading for a second, in memory
    waiting = InThread(lambda: second.write(second_content[:MiB]))

    assert not waiting.done.wait(0.4), "the second write did not wait"
    assert held(budget) == (PART, 0)
    assert waiting.done.wait(10), waiting.failures

    first_uploaded_at = min(end for _, _, end in calls.calls)
    assert waiting.ended_at >= first_uploaded_at
    second.write(second_content[MiB:])  # its part's room is reserved: no wait
    second.commit()
    first.write(first_content[PART:])
    first.commit()
    assert bucket.read(first_key)["Body"].read() == first_content
    assert bucket.read(second_key)["Body"].read() == second_content
    assert held(budget) == (0, 0)
    assert spooled_files(spool_dir) == 0


# --- the allocator -------------------------------------------------------------------------


def test_malloc_tune_sets_the_allocator_options_on_this_glibc_machine():
    """In a process of its own: the options last as long as the process."""
    probe = "from downloads_project.celery import malloc_tune; print(malloc_tune())"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
