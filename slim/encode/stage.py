"""The `encode` stage: sentence-transformers in a Ray Data actor pool embeds item text and user rationales.

Outputs (slim/io/columns.py), float16 and L2-normalised: encode/items.npy [N+1, D] (row i = item_id i, row 0
zeros) and encode/users_<field>.parquet (user_id, embedding list<float16>[D]) for the whole rationale and
each step. An empty text (a failed or malformed rationale missing a step) gets a zero vector, counted in the
manifest.

Vectors are kept in stores keyed by the encoder settings and the exact text encoded (slim.encode.store): the
actors encode only texts the store lacks (slim.encode.keyed), the driver writes the new vectors as shards every
`shard_rows` rows, so a kill loses at most a shard and a rerun (a new snapshot, or the same command after a kill)
encodes only new and changed texts; the manifest counts texts encoded and reused per source and field. The output
files are then joined from the stores (no encoding), under temporary names, and renamed together at the end.
Reading runs at most `object_store_mib` ahead of the actors, so memory is bounded by the batch size, the number of
actors and that budget, plus 8 bytes per stored text in each actor, 8 per text new to a store in the driver's
Sink and 8 per row and field in the driver's join.

Truncation: the encoder sees at most `max_seq_length` word pieces (all-MiniLM-L6-v2: 256, [CLS]/[SEP]
included). Steps are encoded separately, each cut at its head when longer. The whole rationale is cut head+tail
so that step 3 (the most useful step in the paper) survives: when "Step 1..2" + "Step 3" do not fit, step 3 keeps
up to 3/4 of the window (whole if it fits) and the head of steps 1-2 fills the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage
from slim.encode.actors import pool
from slim.encode.settings import RUNTIME_KEYS, EncodeConfig
from slim.text.prompts import HISTORY_CUT
from slim.io.rundir import Manifest, RunDir
from slim.runtime.console import Progress, say

log = logging.getLogger(__name__)

STAGE = C.ENCODE_DIR  # encode/manifest.json, beside the vectors
FIELDS = C.USER_EMB_FIELDS  # rationale, step1, step2, step3


def stage_config(cfg: EncodeConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}


def encode_items(cfg: EncodeConfig, rd: RunDir, vkey: str) -> dict:
    """items.parquet -> the items store (texts it lacks) -> items.npy [N+1, D] by item_id, under a temporary name."""
    from slim.encode import store
    from slim.encode.keyed import KeyedEncoder
    from slim.encode.users import _emb_array
    from slim.runtime.raycluster import read_parquet

    n = storage.read_metadata(rd.path(C.ITEMS_FILE)).num_rows
    ds = read_parquet(str(rd.path(C.ITEMS_FILE)), [C.ITEM_ID, C.TEXT], cfg.block_kib, cfg.object_store_mib)
    folder = rd.path(C.ENCODE_STORE) / vkey / f"items_{C.TEXT}"
    index = atomic.tmp_path(rd.path(f"{C.ENCODE_DIR}/items_index.parquet"))
    ischema = pa.schema([(C.ITEM_ID, pa.int64()), (C.TEXT_HASH, pa.uint64())])
    counts, dim = {"item_truncated": 0, "item_empty": 0, "item_encoded": 0}, 0
    actors = pool(cfg, (C.TEXT,))
    actors["fn_constructor_kwargs"]["known"] = {C.TEXT: store.known(folder)}
    sink, seen = store.Sink({C.TEXT: folder}, index, ischema, cfg.shard_rows), 0
    prog = Progress("encode (items)", n, "items")
    try:
        for b in ds.map_batches(KeyedEncoder, **actors).iter_batches(batch_format="numpy", batch_size=None):
            ids, new, dim = b[C.ITEM_ID].astype(np.int64), b[f"new_{C.TEXT}"], b[f"emb_{C.TEXT}"].shape[1]
            if ids.min() < 1 or ids.max() > n:
                raise ValueError(f"{rd.path(C.ITEMS_FILE)}: item_id {ids.min()}..{ids.max()} outside 1..{n}")
            kept = sink.add({C.ITEM_ID: ids, C.TEXT_HASH: b[f"hash_{C.TEXT}"]},
                            {C.TEXT: pa.table({C.TEXT_HASH: pa.array(b[f"hash_{C.TEXT}"][new], pa.uint64()),
                                               C.EMBEDDING: _emb_array(b[f"emb_{C.TEXT}"][new])})})
            seen += len(ids)
            prog.update(seen)
            counts["item_encoded"] += kept[C.TEXT]  # texts new to the store, once each (another batch's: dropped)
            for k, name in (("cut", "item_truncated"), ("empty", "item_empty")):
                counts[name] += int(b[f"{k}_{C.TEXT}"].sum())
    except BaseException:
        sink.close(flush=False)  # every shard written stays: the rerun encodes only the rest
        raise
    sink.close()
    if seen != n:
        raise ValueError(f"{rd.path(C.ITEMS_FILE)}: encoded {seen} items, expected {n}")
    tmp = atomic.tmp_path(rd.path(C.ITEM_EMB_FILE))
    _items_npy(folder, index, tmp, n, dim)
    storage.remove_tree(index)
    return {"items": n, **counts, "item_reused": n - counts["item_empty"] - counts["item_encoded"],
            "_tmp": {str(tmp): str(rd.path(C.ITEM_EMB_FILE))}}


def _items_npy(folder, index, tmp, n: int, dim: int) -> None:
    """items.npy joined from the index and the store; an empty text's row, and row 0 (padding), zeros."""
    from slim.encode import store

    idx = pq.read_table(index)
    ids, hashes = idx.column(C.ITEM_ID).to_numpy(), idx.column(C.TEXT_HASH).to_numpy()
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n + 1, dim))  # zeros

    def emit(rows, t):
        e = t.column(C.EMBEDDING).combine_chunks()
        arr[rows] = e.values.to_numpy(zero_copy_only=False).reshape(len(rows), dim)

    got = store.assemble(folder, ids, hashes, emit, store.VECTOR_SCHEMA)
    if len(got["missing"]):
        raise RuntimeError(f"{folder}: no vector for {len(got['missing'])} item(s); is another encode run writing?")
    arr.flush()
    del arr


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
    from slim.encode import store
    from slim.io.rundir import content_fingerprint, fingerprint

    out = rd.stage_dir(STAGE)
    rd.invalidate(STAGE)
    atomic.clean_tmp(out)  # left by a kill mid-write; the stores' shards stay
    if force:  # --force encodes every text again
        storage.remove_tree(rd.path(C.ENCODE_STORE))
    settings = store.vector_key(cfg)
    vkey = fingerprint(settings)
    init_ray(cfg.ray_address, cfg.num_cpus)
    t0 = time.perf_counter()
    items = encode_items(cfg, rd, vkey)
    t1 = time.perf_counter()
    from slim.encode.users import SOURCE_FILES, encode_users, history_prompt, source_fields
    from slim.text.quality import describe

    item_vecs = str(atomic.tmp_path(rd.path(C.ITEM_EMB_FILE)))  # written above, published with the rest below
    if storage.is_remote(rd.root):  # the encoder actors, on any node, read it from the bucket (a name readers skip)
        staged = rd.path(C.ITEM_EMB_FILE).with_name(f".tmp-{rd.path(C.ITEM_EMB_FILE).name}")
        storage.upload(item_vecs, staged)
        item_vecs = str(staged)
    expected = {s: rd.read_manifest(SOURCE_STAGES[s]).counts.get("users", 0) for s in cfg.sources}
    grounds = cfg.ground_threshold > 0 and any(s != "history" for s in cfg.sources)
    items_key = content_fingerprint(item_vecs) if grounds else ""  # the grounding stores' key: read once
    per_source = {s: encode_users(cfg, rd, s, item_vecs, expected[s], vkey, items_key) for s in cfg.sources}
    quality = {s: c.pop("_quality") for s, c in per_source.items()}
    store.prune(rd.path(C.ENCODE_STORE), {vkey}.union(*(c.pop("_keys") for c in per_source.values())))
    t2 = time.perf_counter()
    tmps = items.pop("_tmp")
    for c in per_source.values():
        tmps.update(c.pop("_tmp"))
    atomic.publish(tmps)  # all outputs appear together, after every batch is written
    atomic.clean_tmp(out)
    # the student's counts keep their plain names (users, step3_empty, ...); the teacher's are prefixed
    counts = {**items, **{(k if s == "student" else f"{s}_{k}"): v
                          for s, c in per_source.items() for k, v in c.items()}}
    n_users = sum(c["users"] for c in per_source.values())
    files = [SOURCE_FILES[s].format(field=f) for s in cfg.sources for f in source_fields(s)]
    if cfg.ground_threshold > 0:
        files += [C.GROUNDING_FILE.format(source=s) for s in cfg.sources if s != "history"]
    m = Manifest(STAGE, sc, inputs, outputs=[C.ITEM_EMB_FILE] + files,
                 counts=counts, timings={"items_s": t1 - t0, "users_s": t2 - t1, "total_s": t2 - t0,
                                         "users_per_s": n_users / max(t2 - t1, 1e-9)},
                 extra={"truncation": __doc__.split("Truncation: ")[1].strip(), "quality": quality,
                        "vectors": {**settings, "key": vkey},  # what keys the stores (slim.encode.store)
                        # the history control's text shows item_ids[:-history_cut], as every rationale prompt
                        **({"history_cut": HISTORY_CUT, "history_prompt": history_prompt(rd)}
                           if "history" in cfg.sources else {})})
    rd.write_manifest(m)
    say(f"encode: {items['items']:,} items ({t1 - t0:.1f}s, truncated {items['item_truncated']:,}; texts encoded "
        f"{items['item_encoded']:,}, reused {items['item_reused']:,}), {n_users:,} rationales x {len(FIELDS)} fields "
        f"({t2 - t1:.1f}s)")
    for s, c in per_source.items():
        fs = source_fields(s)
        say(f"  {s}: {c['users']:,} users; truncated " + ", ".join(f"{f} {c[f + '_truncated']:,}" for f in fs)
              + "; empty " + ", ".join(f"{f} {c[f + '_empty']:,}" for f in fs)
              + "; texts encoded/reused " + ", ".join(f"{f} {c[f + '_encoded']:,}/{c[f + '_reused']:,}" for f in fs))
        if quality[s]:
            say("    quality: " + describe(quality[s]))
    return m


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these; a member left
# out takes the face's default (own_inputs: {}, every input is an upstream stage's output).
CONFIG = EncodeConfig
WRITES = (STAGE,)


def reads(cfg: EncodeConfig) -> list[str]:
    return [C.DATA_DIR] + [SOURCE_STAGES[s] for s in cfg.sources if s != "history"]  # history reads data only


def resources(cfg: EncodeConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line

    return [model_line("encode.model", cfg.model, "", problems)]
