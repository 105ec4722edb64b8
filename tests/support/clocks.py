"""A clock that a test moves by hand, for the code that takes `clock=` (epoch seconds)
instead of reading the time itself: the breaker, the origin limits. A test advances it
where it would otherwise sleep."""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
