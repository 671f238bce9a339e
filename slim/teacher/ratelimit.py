"""One rate limit in requests/min and tokens/min shared by every worker actor.

Virtual scheduling (GCRA): each reservation gets the earliest start time that keeps both the request and the
token stream at or below their limits, with no burst credit. Workers ask a single Ray actor for a start time and
sleep until then, so N actors together send exactly as fast as one limit allows instead of N times it.
Tokens are reserved up front from an estimate (prompt + max_tokens, as providers count them) and corrected with
the API's usage once the answer arrives.
"""

from __future__ import annotations

import time


class RateLimiter:
    """Plain class (unit-testable); `remote_limiter` wraps it as a Ray actor."""

    def __init__(self, requests_per_min: float = 0.0, tokens_per_min: float = 0.0, clock=time.monotonic):
        self.req_gap = 60.0 / requests_per_min if requests_per_min > 0 else 0.0  # seconds per request
        self.tok_gap = 60.0 / tokens_per_min if tokens_per_min > 0 else 0.0  # seconds per token
        self.clock = clock
        self.next_req = 0.0  # earliest start of the next request (theoretical arrival time)
        self.next_tok = 0.0
        self.paused_until = 0.0
        self.granted = 0
        self.tokens = 0

    def reserve(self, tokens: int = 0) -> float:
        """Seconds the caller must wait before sending a request of `tokens` estimated tokens."""
        now = self.clock()
        start = max(now, self.next_req, self.next_tok, self.paused_until)
        self.next_req = start + self.req_gap
        self.next_tok = start + tokens * self.tok_gap
        self.granted += 1
        self.tokens += tokens
        return start - now

    def adjust(self, delta_tokens: int) -> None:
        """Correct a reservation by the actual usage (negative: fewer tokens than estimated)."""
        self.next_tok += delta_tokens * self.tok_gap
        self.tokens += delta_tokens

    def pause(self, seconds: float) -> None:
        """A 429 with Retry-After holds back every worker, not only the one that got it."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def stats(self) -> dict:
        return {"granted": self.granted, "tokens": self.tokens}


def remote_limiter(requests_per_min: float, tokens_per_min: float):
    """The limiter as a Ray actor; num_cpus=0 so it never competes with workers for a CPU slot."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_concurrency=1)(RateLimiter)
    return actor_cls.remote(requests_per_min, tokens_per_min)
