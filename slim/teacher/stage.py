"""The `teacher` stage: rationales for a labelled subset of users from an OpenAI-compatible teacher.

run(cfg): pick users (stratified, by a hash of raw id and seed) -> build the paper's prompts -> skip users done (rows in
shards whose prompt and model match) -> dry-run estimate -> online (Ray Data + global rate limit) or Batch API
-> compact shards to one row per user (every other paid row kept in archive/) -> cost.json, manifest.json.
Rows are durable as their answers arrive (slim.teacher.shards); a killed job rerun with the same command sends
only what is not done. cost.json counts every billed response, usable or not ("billed"), apart from what the
kept ok answers cost ("useful").

Why not ray.data.llm's HTTP request processor (Ray 2.60, HttpRequestProcessorConfig): its `qps` limit is per
actor, with no tokens/min limit, so N actors send N times the limit; it retries 408/429/502-504 with plain
exponential backoff (no jitter, Retry-After ignored, 500 not retried); a row that runs out of retries raises and
fails the whole dataset instead of becoming a failed row; it keeps no usage, so no cost. We keep Ray Data for
sharding and an actor pool (TeacherWorker) and put our own client behind it: one rate-limiter actor shared by all
workers (requests/min and tokens/min), retries per the issue, failed rows recorded, usage and cost per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import pyarrow.compute as pc

from slim.io import columns as C
from slim.text import quality
from slim.io import atomic
from slim.io import storage
from slim.text.prompts import HISTORY_CUT, PromptConfig
from slim.io.rundir import Manifest, RunDir
from slim.teacher import client
from slim.teacher import budget, select, shards
from slim.runtime.console import say
from slim.runtime.tracking import Tracker, TrackingConfig

log = logging.getLogger(__name__)

STAGE = C.TEACHER_DIR  # teacher/manifest.json
COST_FILE = f"{STAGE}/cost.json"


@dataclass(frozen=True)
class TeacherConfig:
    run_dir: str = "runs/default"
    model: str = "gpt-4o-mini"  # the served model name; with local_server, the name vLLM serves it under
    # The OpenAI-compatible API, e.g. https://api.openai.com/v1; "" = none (then local_server must be on): a config
    # without a teacher section never reaches a paid API
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # name of the env variable holding the key; "" = no auth (local server)
    local_server: bool = False  # start vLLM in the driver over `local_model` and send requests there
    # Where that server listens: "auto" = 127.0.0.1 on a private local cluster, the driver node's address when the
    # job joined a cluster (its actors may run on other nodes); or an address to bind to. 0 = any free port.
    local_server_host: str = "auto"
    local_server_port: int = 0  # the local server's port; 0 = any free port
    local_model: str = "smollm2-135m-instruct"  # a slim.runtime.llm_models name or a local path
    # float32: CPUs without AVX-512 emulate bfloat16 (vLLM's default downcast), several times slower.
    local_server_args: tuple[str, ...] = ("--max-model-len", "2048", "--enforce-eager", "--dtype", "float32")
    local_server_timeout_s: float = 600.0  # vLLM on CPU starts in ~45 s idle, minutes on a busy machine
    num_users: int = 2000  # the labelled subset; 0 = every user
    seed: int = 2024  # the stratified sample of users
    strata: int = 5  # history-length quantile bins for the stratified sample
    max_tokens: int = 512  # longest answer; also what each request reserves of tokens/min and the cost ceiling
    temperature: float = 0.0  # sampling temperature; 0 = greedy
    extra_body: dict = field(default_factory=dict)  # passed through, e.g. {repetition_penalty: 1.2} for vLLM
    # Answers as JSON under slim.text.rationale.SCHEMA through the API's response_format (OpenAI, vLLM's server); off
    # for APIs without schemas, whose free text is parsed by its "Step N:" markers
    structured: bool = False
    mode: Literal["online", "batch"] = "online"  # online requests on Ray Data, or one provider Batch API job
    requests_per_min: float = 500.0  # one limit over all actors; 0 = unlimited
    tokens_per_min: float = 200_000.0  # one limit over all actors (prompt + max_tokens); 0 = unlimited
    num_actors: int = 2  # worker actors sending requests
    threads_per_actor: int = 8  # requests in flight per actor
    batch_size: int = 16  # rows per Ray Data batch = rows per shard file
    actor_num_cpus: float = 0.25  # fractional: 2-core machines deadlock with whole-CPU actors
    request_timeout_s: float = 60.0  # per attempt
    max_attempts: int = 6  # per row, the first included; then the row fails with its last error
    backoff_base_s: float = 1.0  # first retry waits about this long, doubling per attempt (with jitter)
    backoff_max_s: float = 60.0  # longest backoff between attempts
    retry_after_max_s: float = 120.0  # a provider's Retry-After above this is cut to it (a garbled one is ignored)
    retry_failed: bool = True  # a rerun retries rows that failed before (--retry-failed sets it too)
    price_in_per_mtok: float = 0.0  # USD per million prompt tokens; required (> 0) for a paid API
    price_out_per_mtok: float = 0.0  # USD per million answer tokens; required (> 0) for a paid API
    price_unknown_ok: bool = False  # allow a paid API without prices (cost.json then says $0, no ceiling holds)
    # Stop before everything billed in this run directory would exceed this many USD (null = no ceiling)
    max_cost_usd: Optional[float] = 10.0
    batch_discount: float = 0.5  # Batch API price factor
    batch_poll_s: float = 30.0  # batch mode: seconds between status checks
    batch_max_wait_s: float = 86_400.0  # batch mode: give up waiting after this long (rerun collects it)
    dry_run: bool = False  # print estimated tokens and cost for the users still to do, send nothing
    cache_dir: str = "~/.cache/slim"  # where local_model is found or converted
    prompt: PromptConfig = field(default_factory=PromptConfig)
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    # MLflow tracking of tokens and cost (slim.runtime.tracking); the top-level `tracking:` unless set here
    tracking: TrackingConfig = TrackingConfig()


# What decides the rows (model, prompt, sampling, users) is fingerprinted; how fast and where it runs is not.
OUTPUT_KEYS = ("model", "base_url", "local_model", "num_users", "seed", "strata", "max_tokens", "temperature",
               "extra_body", "mode", "prompt", "structured")


def stage_config(cfg: TeacherConfig) -> dict:
    # history_cut: which prefix the prompts show (slim.text.prompts); the train stage checks it before fusing rationales
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k in OUTPUT_KEYS}, "history_cut": HISTORY_CUT}


def settings(cfg: TeacherConfig) -> client.CallSettings:
    return client.CallSettings(cfg.model, cfg.max_tokens, cfg.temperature, cfg.max_attempts, cfg.backoff_base_s,
                          cfg.backoff_max_s, cfg.price_in_per_mtok, cfg.price_out_per_mtok,
                          cfg.batch_discount if cfg.mode == "batch" else 1.0, dict(cfg.extra_body),
                          cfg.retry_after_max_s, response_format(cfg.structured))


def response_format(structured: bool) -> dict | None:
    from slim.text.rationale import SCHEMA

    return {"type": "json_schema", "json_schema": {"name": "rationale", "schema": SCHEMA}} if structured else None


def _done_users(existing, prompts: dict[int, str], cfg: TeacherConfig) -> set[int]:
    """Users whose latest row is an answer (or a failure we keep) to the current prompt from the current model."""
    keep = ("ok", "malformed") if cfg.retry_failed else shards.STATUSES
    done = set()
    for uid, prompt, model, status in zip(*(existing.column(c).to_pylist()
                                            for c in (C.USER_ID, C.PROMPT, C.MODEL, C.STATUS))):
        if status in keep and model == cfg.model and prompts.get(uid) == prompt:
            done.add(uid)
    return done


def estimate(todo: list[dict], existing, cfg: TeacherConfig) -> dict:
    """Tokens and cost before spending: prompts at ~4 chars/token, answers at max_tokens (an upper bound) and,
    when earlier rows exist, at their mean length (the likely figure)."""
    s = settings(cfg)
    tin = sum(client.estimate_tokens(r["messages"], 0) for r in todo)
    ok = existing.filter(pc.equal(existing.column(C.STATUS), "ok")) if existing.num_rows else existing
    typical = int(pc.mean(ok.column(C.TOKENS_OUT)).as_py()) if ok.num_rows else None
    out = {"users": len(todo), "tokens_in": tin, "tokens_out_max": len(todo) * cfg.max_tokens,
           "cost_usd_max": client.cost(tin, len(todo) * cfg.max_tokens, s)}
    if typical is not None:
        out.update(tokens_out_typical=len(todo) * typical, cost_usd_typical=client.cost(tin, len(todo) * typical, s))
    return out


@contextlib.contextmanager
def teacher_endpoint(cfg: TeacherConfig, rd: RunDir, host: str = "127.0.0.1"):
    """The base URL to call: the configured one, or a vLLM server this job starts on `host` and stops."""
    if not cfg.local_server:
        yield cfg.base_url
        return
    from slim.runtime import llm_models
    from slim.teacher.local_server import vllm_server

    path = llm_models.resolve(cfg.local_model, cfg.cache_dir)
    log_path = rd.stage_dir(STAGE) / "server.log"
    if storage.is_remote(log_path):  # the server appends to it as it runs: a local file on this node
        log_path = storage.scratch("logs", storage.key_of(rd.root)) / "teacher-server.log"
    with vllm_server(path, cfg.model, log_path, port=cfg.local_server_port or None, host=host,
                     extra_args=tuple(cfg.local_server_args), startup_timeout_s=cfg.local_server_timeout_s) as server:
        say(f"teacher: local vLLM server at {server.url}")
        yield server.url


def _skip(rd: RunDir, cfg: TeacherConfig, inputs: dict, force: bool) -> Manifest | None:
    m = rd.read_manifest(STAGE)
    if force or cfg.dry_run or m is None or not rd.is_current(STAGE, stage_config(cfg), inputs):
        return None
    if cfg.retry_failed and m.counts.get("failed", 0):
        log.info("teacher: %d failed rows from the last run will be retried", m.counts["failed"])
        return None
    return m


def run(cfg: TeacherConfig, force: bool = False) -> Manifest:
    budget.check(cfg)  # before anything: prices for a paid API, an endpoint at all
    rd = RunDir(cfg.run_dir)
    inputs = {C.DATA_DIR: rd.upstream(C.DATA_DIR)}
    skipped = _skip(rd, cfg, inputs, force)
    if skipped is not None:
        return skipped
    t0 = time.perf_counter()
    users, items = storage.read_table(rd.path(C.USERS_FILE)), storage.read_table(rd.path(C.ITEMS_FILE))
    pos = select.stratified_sample(users.column(C.HISTORY_LEN).to_numpy(), cfg.num_users, cfg.seed, cfg.strata,
                                   keys=users.column(C.RAW_USER_ID).to_pylist())
    chosen = select.build_prompts(users, items, pos, cfg.prompt)
    prompts = {r[C.USER_ID]: r[C.PROMPT] for r in chosen}
    stage_dir = rd.stage_dir(STAGE)
    shards.recover(stage_dir)  # what a killed run left: its logs become shards
    existing = shards.read_latest(stage_dir)  # every paid row, including users outside the selection
    done = _done_users(existing, prompts, cfg)
    todo = [r for r in chosen if r[C.USER_ID] not in done]
    est = estimate(todo, existing, cfg)
    say(f"teacher: {len(chosen):,} users selected, {len(done):,} done, {len(todo):,} to send to {cfg.model} "
          f"({cfg.mode}); estimated {est['tokens_in']:,} tokens in, <= {est['tokens_out_max']:,} out, "
          f"<= ${est['cost_usd_max']:.4f}" + (f" (likely ${est['cost_usd_typical']:.4f})" if "cost_usd_typical"
                                             in est else ""))
    if cfg.dry_run:
        return Manifest(STAGE, stage_config(cfg), inputs, extra={"dry_run": est})
    rd.invalidate(STAGE)
    stats = _generate(cfg, rd, todo, prompts, stage_dir)
    t_gen = time.perf_counter()
    final = shards.compact(stage_dir, set(prompts))
    if stats.get(client.UNSENT):  # paid rows are in the shards; the manifest is not written, a rerun sends the rest
        raise budget.CeilingReached(budget.stop_message(cfg, _billed(stage_dir), stats[client.UNSENT], len(chosen)))
    if final.num_rows != len(chosen):
        raise RuntimeError(f"teacher: {final.num_rows} rows for {len(chosen)} users in {stage_dir}; rerun to resume")
    return _finish(cfg, rd, inputs, final, stats, est, {"generate_s": t_gen - t0, "total_s": time.perf_counter() - t0})


def _generate(cfg: TeacherConfig, rd: RunDir, todo: list[dict], prompts: dict, stage_dir) -> dict:
    from slim.teacher.worker import api_key

    api_key(cfg.api_key_env)  # fail before starting anything when the key is missing
    if not todo:
        return {"rows": 0, "ok": 0, "malformed": 0, "failed": 0, "tokens_in": 0, "tokens_out": 0,
                "cost_usd": 0.0, "attempts": 0, "billed_requests": 0}
    billed = _ceiling(cfg, stage_dir, todo, len(prompts))
    if cfg.mode == "batch":  # the driver alone calls the endpoint: no Ray, loopback unless told otherwise
        from slim.teacher.batch_api import run_batch

        host = "127.0.0.1" if cfg.local_server_host == "auto" else cfg.local_server_host
        with teacher_endpoint(cfg, rd, host) as base_url:
            return run_batch(cfg, settings(cfg), base_url, todo, prompts, str(stage_dir / shards.MAIN), stage_dir)
    from slim.runtime.raycluster import init_ray, server_host
    from slim.teacher.worker import run_online

    # Ray first: on a cluster the local server binds to this node's address, which the worker actors call.
    init_ray(cfg.ray_address, cfg.num_cpus)
    with teacher_endpoint(cfg, rd, server_host(cfg.local_server_host, cfg.ray_address)) as base_url:
        return run_online(cfg, settings(cfg), base_url, todo, str(stage_dir), billed)


def _ceiling(cfg: TeacherConfig, stage_dir, todo: list[dict], users: int) -> float:
    """What the run directory was billed so far; CeilingReached when teacher.max_cost_usd leaves nothing to send
    or (Batch API: one batch, all or nothing) less than the batch may cost."""
    billed = _billed(stage_dir)
    if cfg.max_cost_usd is None:
        return billed
    if billed >= cfg.max_cost_usd:
        raise budget.CeilingReached(budget.stop_message(cfg, billed, len(todo), users))
    most = estimate(todo, shards.read_latest(stage_dir), cfg)["cost_usd_max"]
    collecting = storage.path(stage_dir / "batch_state.json").exists()  # submitted by a killed run: paid already
    if cfg.mode == "batch" and not collecting and billed + most > cfg.max_cost_usd:
        raise budget.CeilingReached(f"teacher.max_cost_usd={cfg.max_cost_usd}: the batch of {len(todo):,} requests "
                                    f"may cost up to ${most:.4f} on top of ${billed:.4f} billed; raise the ceiling "
                                    "or lower teacher.num_users")
    return billed


def _billed(stage_dir) -> float:
    """USD billed in this run directory so far (every paid row, as cost.json's `billed`)."""
    everything = shards.read_all(stage_dir)
    return float(pc.sum(everything.column(C.COST_USD)).as_py() or 0.0) if everything.num_rows else 0.0


def _finish(cfg, rd, inputs, final, stats, est, timings) -> Manifest:
    statuses = final.column(C.STATUS).to_pylist()
    counts = {"users": final.num_rows, **{s: statuses.count(s) for s in shards.STATUSES}}
    led = shards.ledger(shards.read_all(rd.stage_dir(STAGE)), final)
    cost = {
        "model": cfg.model, "mode": cfg.mode, **counts,
        # Every response billed in this run directory (all runs, kept rows, superseded and archived ones).
        "tokens_in": led["billed"]["tokens_in"], "tokens_out": led["billed"]["tokens_out"],
        "cost_usd": led["billed"]["cost_usd"], **led,
        "prices_usd_per_mtok": {"in": cfg.price_in_per_mtok, "out": cfg.price_out_per_mtok,
                                "factor": settings(cfg).price_factor},
        "this_run": stats, "estimate_this_run": est,
    }
    atomic.write_json(rd.path(COST_FILE), cost)
    m = Manifest(STAGE, stage_config(cfg), inputs, outputs=[C.TEACHER_SHARDS, COST_FILE],
                 counts=counts, timings=timings,
                 extra={"cost_usd": cost["cost_usd"], "billed": led["billed"], "useful": led["useful"],
                        "this_run": stats, "quality": quality.of_table(final)})
    rd.write_manifest(m)
    Tracker(cfg.tracking, cfg.run_dir).teacher(cost)
    print_summary(m, cost)
    return m


def print_summary(m: Manifest, cost: dict) -> None:
    c, r = m.counts, cost["this_run"]
    say(f"teacher: {c['users']:,} users: {c['ok']:,} ok, {c['malformed']:,} malformed, {c['failed']:,} failed; "
          f"{cost['tokens_in']:,} tokens in / {cost['tokens_out']:,} out, ${cost['cost_usd']:.4f} "
          f"({cost['model']}, {cost['mode']}); this run {r['rows']:,} rows in {m.timings['generate_s']:.1f}s")
    b, u = cost["billed"], cost["useful"]
    say(f"  billed: {b['requests']:,} responses ({b['unpriced_requests']:,} with unreadable usage), "
          f"${b['cost_usd']:.4f}; useful: {u['rows']:,} ok answers, ${u['cost_usd']:.4f}")
    if c["failed"]:
        say(f"  {c['failed']} failed rows keep their error; rerun the same command to retry them")
    if m.extra.get("quality"):
        say("  quality: " + quality.describe(m.extra["quality"]))


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these; a member left
# out takes the face's default (own_inputs: {}, every input is an upstream stage's output).
CONFIG = TeacherConfig
WRITES = (STAGE,)


def reads(cfg: TeacherConfig) -> list[str]:
    return [C.DATA_DIR]


def check(cfg: TeacherConfig) -> None:
    """Before any stage runs: an endpoint, and prices for a paid one (ConfigError)."""
    budget.check(cfg)


def resources(cfg: TeacherConfig, problems: list) -> list[str]:
    import os

    from slim.runtime.preflight import model_line

    if cfg.local_server:
        return [model_line("teacher.local_model", cfg.local_model, cfg.cache_dir, problems)]
    from slim.teacher.budget import is_paid

    ceiling = "no ceiling" if cfg.max_cost_usd is None else f"at most ${cfg.max_cost_usd:g} in this run dir"
    out = [f"teacher model {cfg.model!r} at {cfg.base_url}"
           + (f" (paid API: {ceiling}, teacher.max_cost_usd)" if is_paid(cfg) else "")]
    if cfg.api_key_env and not cfg.dry_run and cfg.api_key_env not in os.environ:
        out.append(f"note: ${cfg.api_key_env} (teacher.api_key_env) is not set here; the job needs it")
    return out
