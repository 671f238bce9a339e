"""Online mode: Ray Data shards the prompts over a pool of worker actors that share one rate limiter.

Each actor keeps a thread pool of `openai` clients in flight (requests are I/O bound), appends every row to its
own log the moment its answer arrives (slim.teacher.shards.RowLog: a kill loses only the requests in flight, at
most num_actors x threads_per_actor), and returns only a small summary to the driver, which shows progress.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from slim.io import columns as C
from slim.teacher import client
from slim.teacher import shards
from slim.runtime.console import Progress

log = logging.getLogger(__name__)

SUMMARY = (C.USER_ID, C.STATUS, C.TOKENS_IN, C.TOKENS_OUT, C.COST_USD, C.ATTEMPTS, C.BILLED)


def api_key(env_name: str) -> str:
    """The key from the environment only; servers without auth (a local vLLM) get a placeholder."""
    if not env_name:
        return "EMPTY"
    key = os.environ.get(env_name)
    if not key:
        raise RuntimeError(f"environment variable {env_name} (teacher.api_key_env) is not set")
    return key


class Secret:
    """The driver's key on its way to the worker actors (whose environment, on a cluster joined with
    RAY_ADDRESS, is the raylet's, not the driver's). It travels in memory with the actor's constructor
    arguments, never in runtime_env (shown by the dashboard and `ray job` APIs), and prints masked."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


class TeacherWorker:
    """A Ray Data callable class: one batch of prompts in, each row logged as it finishes, a summary out."""

    def __init__(self, settings: client.CallSettings, base_url: str, key: Secret, limiter, stage_dir: str,
                 threads: int, timeout_s: float, budget=None):
        from slim.teacher.budget import BudgetHandle

        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=key.value, max_retries=0, timeout=timeout_s)
        self.s = settings
        self.limiter = limiter
        self.budget = BudgetHandle(budget) if budget is not None else None
        self.log = shards.RowLog(stage_dir)
        self.pool = ThreadPoolExecutor(threads)
        self.rng = random.Random(os.getpid() ^ time.time_ns())

    def _reserve(self, tokens: int) -> float:
        import ray

        return ray.get(self.limiter.reserve.remote(tokens)) if self.limiter is not None else 0.0

    def _adjust(self, delta: int) -> None:
        if self.limiter is not None:
            self.limiter.adjust.remote(delta)  # fire and forget: ordering does not matter for a correction

    def _pause(self, seconds: float) -> None:
        if self.limiter is not None:
            self.limiter.pause.remote(seconds)

    def _one(self, uid, prompt, messages_json) -> dict:
        try:
            messages = json.loads(messages_json)
        except ValueError as e:  # never expected (the driver wrote it); a failed row all the same
            row = client.failed_row(int(uid), str(prompt), f"internal error: messages: {e}", self.s, 0)
        else:
            row = client.call(self.client, int(uid), str(prompt), messages, self.s, self._reserve, self._adjust,
                         self._pause, self.rng, budget=self.budget)
        if row[C.STATUS] != client.UNSENT:  # an unsent row cost nothing and is not done: the next run sends it
            self.log.append(row)  # durable before the batch (or anything else) is done
        return row

    def __call__(self, batch: dict) -> dict:
        rows = list(self.pool.map(self._one, batch[C.USER_ID], batch[C.PROMPT], batch["messages"]))
        return {k: [r[k] for r in rows] for k in SUMMARY}


def run_online(cfg, settings: client.CallSettings, base_url: str, todo: list[dict], stage_dir: str,
               billed_usd: float = 0.0) -> dict:
    """Process `todo` rows on Ray Data; returns counts of this run's rows by status (`unsent`: kept back by
    teacher.max_cost_usd), tokens and cost. billed_usd: what the run directory was billed before this run."""
    import ray
    from ray.data import ActorPoolStrategy

    from slim.teacher.budget import remote_budget
    from slim.teacher.ratelimit import remote_limiter

    limiter = budget = None
    if cfg.requests_per_min > 0 or cfg.tokens_per_min > 0:
        limiter = remote_limiter(cfg.requests_per_min, cfg.tokens_per_min)
    if cfg.max_cost_usd is not None and (settings.price_in_per_mtok > 0 or settings.price_out_per_mtok > 0):
        budget = remote_budget(cfg.max_cost_usd, billed_usd)
    items = [{C.USER_ID: r[C.USER_ID], C.PROMPT: r[C.PROMPT], "messages": json.dumps(r["messages"])} for r in todo]
    n_blocks = max(1, -(-len(items) // cfg.batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        TeacherWorker, batch_size=cfg.batch_size, batch_format="numpy", num_cpus=cfg.actor_num_cpus,
        # Two batches per actor at once (sharing its thread pool): the next batch's requests start while the
        # previous batch's stragglers finish and its shard is written, so the rate limit never sits idle.
        compute=ActorPoolStrategy(size=min(cfg.num_actors, n_blocks), max_concurrent_calls_per_actor=2,
                                  enable_true_multi_threading=True),
        fn_constructor_kwargs={"settings": settings, "base_url": base_url, "key": Secret(api_key(cfg.api_key_env)),
                               "limiter": limiter, "stage_dir": stage_dir, "threads": cfg.threads_per_actor,
                               "timeout_s": cfg.request_timeout_s, "budget": budget},
    )
    stats = {"rows": 0, "ok": 0, "malformed": 0, "failed": 0, client.UNSENT: 0, "tokens_in": 0, "tokens_out": 0,
             "cost_usd": 0.0, "attempts": 0, "billed_requests": 0}
    prog = Progress("teacher", len(items), "users")
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        stats["rows"] += len(b[C.USER_ID])
        for st in b[C.STATUS]:
            stats[str(st)] += 1
        for k in (C.TOKENS_IN, C.TOKENS_OUT, C.ATTEMPTS, C.BILLED):
            stats[k] += int(b[k].sum())
        stats["cost_usd"] += float(b[C.COST_USD].sum())
        prog.update(stats["rows"], f"{stats['failed']} failed, {stats['malformed']} malformed, "
                                   f"${stats['cost_usd']:.4f}")
    prog.close()
    for actor in (limiter, budget):
        if actor is not None:
            ray.kill(actor)
    return stats
