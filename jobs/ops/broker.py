"""Reads of the broker's Redis: how many messages wait in each priority's queue.

kombu's Redis transport keeps priority 0 in the queue's own list and the other priority
steps in lists named "<queue>\x06\x16<step>" (PRIORITY_STEPS = [0, 3, 6, 9]).
"""

from infra.redis import broker_client
from jobs.queues import queue_name

PRIORITIES = ("high", "normal", "low")
_KOMBU_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


def queue_depths() -> dict[str, int]:
    """Messages waiting per priority."""
    pipe = broker_client().pipeline(transaction=False)
    for priority in PRIORITIES:
        queue = queue_name(priority)
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{_KOMBU_SEP}{step}" if step else queue)
    sizes = iter(pipe.execute())
    return {priority: sum(next(sizes) for _ in _KOMBU_PRIORITY_STEPS) for priority in PRIORITIES}
