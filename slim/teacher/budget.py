"""Money safety for the teacher: a paid API needs its prices, and a ceiling stops the stage before it is exceeded.

A teacher is paid when its requests leave this machine for an API (`teacher.base_url` not on loopback, no
`teacher.local_server`); it then needs `price_in_per_mtok` and `price_out_per_mtok` (else cost.json would report
$0 and the ceiling could not hold) or an explicit `teacher.price_unknown_ok: true`.

The ceiling `teacher.max_cost_usd` covers everything billed in the run directory, earlier runs included (cost.json's
`billed`). Before each attempt a request reserves its largest cost (the prompt estimate plus `max_tokens` of
answer, at the configured prices) from one Budget shared by every worker, and gives back the difference once the
usage is known; a request that does not fit is not sent. Users left unsent are not written, so rerunning with a
higher ceiling sends exactly them.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlparse

from slim.runtime.config import ConfigError

log = logging.getLogger(__name__)


class CeilingReached(ConfigError):
    """teacher.max_cost_usd would be exceeded: the stage stopped (a config matter: the CLI prints one line, exit 2)."""


class OverBudget(Exception):
    """Raised by a Budget's caller for one request that does not fit; never leaves slim.teacher.client.call."""


def is_paid(cfg) -> bool:
    """Requests go to an API off this machine (a local vLLM, on loopback or started by the job, costs nothing)."""
    if cfg.local_server:
        return False
    host = urlparse(cfg.base_url).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: an API somewhere


def check(cfg) -> None:
    """ConfigError for a teacher that could spend money it cannot count, or has nowhere to send requests."""
    if not cfg.local_server and not cfg.base_url:
        raise ConfigError("teacher: no endpoint: set teacher.local_server: true (the offline teacher) or "
                          "teacher.base_url (an OpenAI-compatible API, with its prices); a config without a teacher "
                          "section has neither, so leave the teacher out with --stages")
    if cfg.max_cost_usd is not None and cfg.max_cost_usd <= 0:
        raise ConfigError(f"teacher.max_cost_usd: must be > 0 (null = no ceiling), got {cfg.max_cost_usd}")
    if is_paid(cfg) and not (cfg.price_in_per_mtok > 0 and cfg.price_out_per_mtok > 0) and not cfg.price_unknown_ok:
        raise ConfigError(f"teacher.price_in_per_mtok / teacher.price_out_per_mtok: not set for the paid API at "
                          f"{cfg.base_url} (USD per million tokens; without them cost.json says $0 and "
                          "teacher.max_cost_usd cannot hold); set both, or teacher.price_unknown_ok: true")


class Budget:
    """Plain class (unit-testable); `remote_budget` wraps it as a Ray actor shared by the worker actors."""

    def __init__(self, ceiling_usd: float | None, spent_usd: float = 0.0):
        self.ceiling = ceiling_usd
        self.spent = spent_usd  # billed before this run + reserved or billed in it
        self.refused = 0

    def take(self, usd: float) -> bool:
        """Reserve `usd` for one request; False (nothing reserved) when it would go past the ceiling."""
        if self.ceiling is not None and self.spent + usd > self.ceiling:
            self.refused += 1
            return False
        self.spent += usd
        return True

    def give(self, usd: float) -> None:
        """Return what a request reserved and did not cost."""
        self.spent -= usd

    def stats(self) -> dict:
        return {"spent_usd": self.spent, "refused": self.refused}


def remote_budget(ceiling_usd: float | None, spent_usd: float):
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1)(Budget).remote(ceiling_usd, spent_usd)


class BudgetHandle:
    """A worker's view of the shared Budget actor (take waits for the answer; give does not)."""

    def __init__(self, actor):
        self.actor = actor

    def take(self, usd: float) -> bool:
        import ray

        return ray.get(self.actor.take.remote(usd))

    def give(self, usd: float) -> None:
        self.actor.give.remote(usd)


def stop_message(cfg, billed_usd: float, unsent: int, users: int) -> str:
    return (f"teacher.max_cost_usd={cfg.max_cost_usd}: reached (${billed_usd:.4f} billed in this run directory); "
            f"{unsent:,} of {users:,} users not sent, every paid answer kept; raise teacher.max_cost_usd and rerun "
            "to send the rest")
