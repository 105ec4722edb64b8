"""Asks a breaker once, from a process of its own: test_breaker starts several at once
(spawned, not forked from the multi-threaded test process) to race for the probe."""

from typing import Any


def ask(name: str, now: float, start: Any, answers: Any) -> None:
    import django

    django.setup()
    from jobs.transfer.breaker import OriginBreaker

    breaker = OriginBreaker(name, clock=lambda: now)
    start.wait()
    answers.put(breaker.allow())
