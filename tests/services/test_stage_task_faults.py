"""The attempt's task and a fault of the database: its message is sent again (same task
id, growing countdown, bounded), not acknowledged and left to the reaper's thresholds."""

import logging

import pytest
from django import db

from jobs import services, tasks


def test_a_database_fault_sends_the_message_again_with_the_same_task_id(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[int, str]] = []

    def run(*, job_pk: int, task_id: str = "") -> None:
        calls.append((job_pk, task_id))
        if len(calls) < 4:
            raise db.OperationalError("connection refused")

    monkeypatch.setattr(services, "download_job_run", run)
    with caplog.at_level(logging.WARNING, logger="jobs.tasks"):
        tasks.download_job_stage.apply(args=(7,), task_id="attempt-task")

    assert calls == [(7, "attempt-task")] * 4
    assert [record.getMessage().rsplit(" in ", 1)[1] for record in caplog.records] == ["1 s", "2 s", "4 s"]


def test_a_database_that_stays_down_ends_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def run(*, job_pk: int, task_id: str = "") -> None:
        calls.append(task_id)
        raise db.InterfaceError("connection already closed")

    monkeypatch.setattr(services, "download_job_run", run)
    result = tasks.download_job_stage.apply(args=(7,), task_id="attempt-task")

    assert len(calls) == tasks.DATABASE_FAULT_RETRIES + 1
    assert isinstance(result.result, db.InterfaceError)


def test_another_error_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def run(*, job_pk: int, task_id: str = "") -> None:
        calls.append(task_id)
        raise ValueError("a bug")

    monkeypatch.setattr(services, "download_job_run", run)
    result = tasks.download_job_stage.apply(args=(7,))

    assert len(calls) == 1
    assert isinstance(result.result, ValueError)
