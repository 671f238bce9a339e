"""The user side of the encode stage: each rationale source (the student's, the teacher's, the history control) ->
one vector file per field, the products of step 3 matched to catalogue items, and the quality measures of what
was encoded (slim.text.quality), reported in the stage's summary and manifest. Texts are encoded into the stores
(slim.encode.store: only those not there yet, by slim.encode.keyed's actors) and the files joined from them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import atomic
from slim.io import shards
from slim.io import storage
from slim.io import columns as C
from slim.encode.actors import pool
from slim.encode.settings import EncodeConfig
from slim.io.rundir import RunDir
from slim.runtime.console import Progress

FIELDS = C.USER_EMB_FIELDS  # rationale, step1, step2, step3

log = logging.getLogger(__name__)

SOURCE_SHARDS = {"student": C.STUDENT_SHARDS, "teacher": C.TEACHER_SHARDS}
SOURCE_FILES = {"student": C.USER_EMB_FILE, "teacher": C.TEACHER_USER_EMB_FILE, "history": C.HISTORY_USER_EMB_FILE}


def source_fields(source: str) -> tuple:
    """The history control is one text per user (no steps): only its whole field is written."""
    return (C.RATIONALE,) if source == "history" else FIELDS


class HistoryText:
    """users rows -> the no-LLM control's text: the numbered item texts of the prefix a rationale prompt shows
    (slim.text.prompts.history_text: item_ids[:-HISTORY_CUT], its most recent max_history_items, titles cut as there),
    in the columns the Encoder reads for a rationale."""

    def __init__(self, items_path: str, max_history_items: int, max_title_chars: int):
        from slim.text.prompts import PromptConfig

        items = storage.read_table(items_path, columns=[C.ITEM_ID, C.TEXT])
        self.text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
        self.pc = PromptConfig(max_history_items=max_history_items, max_title_chars=max_title_chars)

    def __call__(self, batch: dict) -> dict:
        from slim.text.prompts import history_text

        texts = np.array([history_text(ids, self.text, self.pc) for ids in batch[C.ITEM_IDS]], dtype=object)
        empty = np.array([""] * len(texts), dtype=object)
        return {C.USER_ID: batch[C.USER_ID], C.RATIONALE: texts, C.STEP1: empty, C.STEP2: empty, C.STEP3: empty,
                C.STATUS: np.array(["ok"] * len(texts), dtype=object)}


def history_prompt(rd: RunDir) -> dict:
    """The prompt's history settings: the student stage's when it ran (the control sees what its prompts saw),
    else the defaults."""
    from slim.text.prompts import PromptConfig

    m, pc = rd.read_manifest(C.STUDENT_DIR), PromptConfig()
    got = (m.config.get("prompt") or {}) if m is not None else {}
    return {"max_history_items": int(got.get("max_history_items", pc.max_history_items)),
            "max_title_chars": int(got.get("max_title_chars", pc.max_title_chars))}


def _dataset(cfg: EncodeConfig, rd: RunDir, source: str):
    import ray

    from slim.runtime.raycluster import read_parquet

    if source != "history":
        cols = [C.USER_ID, C.RATIONALE, C.STEP1, C.STEP2, C.STEP3, C.STATUS]
        return read_parquet(source_files(source, rd), cols, cfg.block_kib, cfg.object_store_mib)
    ds = read_parquet(str(rd.path(C.USERS_FILE)), [C.USER_ID, C.ITEM_IDS], cfg.block_kib, cfg.object_store_mib)
    return ds.map_batches(HistoryText, batch_size=cfg.batch_size, batch_format="numpy", num_cpus=0.25,
                          compute=ray.data.ActorPoolStrategy(size=1),
                          fn_constructor_kwargs={"items_path": str(rd.path(C.ITEMS_FILE)), **history_prompt(rd)})


def source_files(source: str, rd: RunDir) -> list[str]:
    folder = rd.path(SOURCE_SHARDS[source])
    files = [str(p) for p in shards.shard_files(folder)]  # one row per user: both stages compact their shards
    if not files:
        raise FileNotFoundError(f"no rationale shards in {folder} ('{source}' in encode.sources); run that stage first")
    return files


def _emb_array(e: np.ndarray) -> pa.Array:
    """[B, D] float16 -> list<float16>."""
    flat = pa.array(e.reshape(-1), pa.float16())
    return pa.ListArray.from_arrays(pa.array(np.arange(0, e.size + 1, e.shape[1], dtype=np.int32)), flat)


GROUNDING_SCHEMA = pa.schema([(C.USER_ID, pa.int64()), ("products", pa.list_(pa.string())),
                              ("item_ids", pa.list_(pa.int64())), ("sims", pa.list_(pa.float32()))])
VECTORS = pa.schema([(C.USER_ID, pa.int64()), (C.EMBEDDING, pa.list_(pa.float16()))])


def _stores(cfg: EncodeConfig, rd: RunDir, source: str, vkey: str, items_key: str) -> dict:
    """name -> store folder (slim.encode.store): one per field, and the grounding's, whose key adds the threshold
    and items_key, the item vectors' content fingerprint (a new catalogue text re-grounds every step 3)."""
    from slim.io.rundir import fingerprint

    root = rd.path(C.ENCODE_STORE)
    out = {f: root / vkey / f"{source}_{f}" for f in source_fields(source)}
    if cfg.ground_threshold > 0 and source != "history":
        gkey = fingerprint({"vectors": vkey, "threshold": cfg.ground_threshold, "items": items_key})
        out["grounding"] = root / gkey / f"{source}_grounding"
    return out


def _new_rows(b: dict, fields: tuple, ground: bool) -> dict:
    """One actor batch -> store name -> table of the texts it encoded (or grounded)."""
    from slim.encode.store import GROUNDING_SCHEMA

    new = {}
    for f in fields:
        m = b[f"new_{f}"]
        new[f] = pa.table({C.TEXT_HASH: pa.array(b[f"hash_{f}"][m], pa.uint64()),
                           C.EMBEDDING: _emb_array(b[f"emb_{f}"][m])})
    if ground:
        rows = np.flatnonzero(b["gnew"])
        new["grounding"] = pa.table({
            C.TEXT_HASH: pa.array(b["ghash"][rows], pa.uint64()), "products": [list(b["products"][i]) for i in rows],
            "item_ids": [list(map(int, b["product_items"][i])) for i in rows],
            "sims": [list(map(float, b["product_sims"][i])) for i in rows]}, GROUNDING_SCHEMA)
    return new


def encode_users(cfg: EncodeConfig, rd: RunDir, source: str, item_vecs: str, expected: int, vkey: str,
                 items_key: str) -> dict:
    """One rationale source: texts the store lacks encoded into it (slim.encode.store), then users_<field>.parquet
    (+ <source>_grounding.parquet) built from it, with the quality measures of what was encoded
    (slim.text.quality). expected: its users (the progress line's total); items_key: item_vecs' content
    fingerprint, computed once by the stage for every source (on a bucket, each would be a download)."""
    from slim.encode import store
    from slim.encode.keyed import KeyedEncoder
    from slim.text.quality import Tally

    ds, fields = _dataset(cfg, rd, source), source_fields(source)
    stores = _stores(cfg, rd, source, vkey, items_key)
    ground = "grounding" in stores
    index = atomic.tmp_path(rd.path(f"{C.ENCODE_DIR}/{source}_index.parquet"))
    ischema = pa.schema([(C.USER_ID, pa.int64())] + [(f"hash_{f}", pa.uint64()) for f in fields]
                        + ([("ghash", pa.uint64())] if ground else []))
    dim = 0
    counts = {"users": 0, **{f"{f}_{k}": 0 for k in ("truncated", "empty", "encoded") for f in fields}}
    tally, prog = Tally(), Progress(f"encode ({source})", expected, "users")
    actors = pool(cfg, fields, item_vecs if ground else "")
    actors["fn_constructor_kwargs"].update(known={f: store.known(stores[f]) for f in fields},
                                           ground_known=store.known(stores["grounding"]) if ground else None)
    sink = store.Sink(stores, index, ischema, cfg.shard_rows)
    try:
        for b in ds.map_batches(KeyedEncoder, **actors).iter_batches(batch_format="numpy", batch_size=None):
            uid = b[C.USER_ID].astype(np.int64)
            kept = sink.add({C.USER_ID: uid, **{f"hash_{f}": b[f"hash_{f}"] for f in fields},
                             **({"ghash": b["ghash"]} if ground else {})}, _new_rows(b, fields, ground))
            for f in fields:
                dim = b[f"emb_{f}"].shape[1]
                counts[f"{f}_encoded"] += kept[f]  # texts new to the store, once each (another batch's: dropped)
                for k, name in (("cut", "truncated"), ("empty", "empty")):
                    counts[f"{f}_{name}"] += int(b[f"{k}_{f}"].sum())
            if source != "history":  # rationale quality means nothing for a list of titles
                tally.add([{C.RATIONALE: b[C.RATIONALE][i], C.STEP1: b[C.STEP1][i], C.STEP2: b[C.STEP2][i],
                            C.STEP3: b[C.STEP3][i], "ok": b[C.STATUS][i] == "ok"} for i in range(len(uid))])
            counts["users"] += len(uid)
            prog.update(counts["users"])
        prog.close()
    except BaseException:
        sink.close(flush=False)  # what is buffered is lost; every shard written stays for the rerun
        raise
    sink.close()
    for f in fields:  # texts with a vector that this run did not encode: stored before, or shared with another user
        counts[f"{f}_reused"] = counts["users"] - counts[f"{f}_empty"] - counts[f"{f}_encoded"]
    tmps = _outputs(rd, source, stores, index, dim)
    storage.remove_tree(index)
    quality = tally.result() if source != "history" else {}
    if ground:
        quality.update(grounded(rd, tmps["grounding"][0]))
    return {**counts, "_quality": quality, "_tmp": {str(t): str(final) for t, final in tmps.values()},
            "_keys": {p.parent.name for p in stores.values()}}


def _outputs(rd: RunDir, source: str, stores: dict, index: Path, dim: int) -> dict:
    """users_<field>.parquet and the grounding file, joined from the index and the stores (no encoding), under
    temporary names. -> {store name: (tmp, final)}"""
    from slim.encode import store

    idx = pq.read_table(index)
    ids = idx.column(C.USER_ID).to_numpy()
    out = {}
    for name, folder in stores.items():
        final = rd.path(C.GROUNDING_FILE.format(source=source) if name == "grounding"
                        else SOURCE_FILES[source].format(field=name))
        tmp, schema = atomic.tmp_path(final), GROUNDING_SCHEMA if name == "grounding" else VECTORS
        h = idx.column("ghash" if name == "grounding" else f"hash_{name}").to_numpy()
        with pq.ParquetWriter(tmp, schema) as w:
            def emit(u, t):
                w.write_table(pa.table([pa.array(u, pa.int64()), *t.columns[1:]], schema=schema))
            got = store.assemble(folder, ids, h, emit, store.GROUNDING_SCHEMA if name == "grounding"
                                 else store.VECTOR_SCHEMA)
            if len(got["missing"]):
                raise RuntimeError(f"{folder}: no vector for {len(got['missing'])} {source} user(s), e.g. "
                                   f"user_id {int(got['missing'][0])}; is another encode run writing there?")
            if name != "grounding" and (h == 0).any():  # empty texts: zero vectors
                zero = np.zeros((int((h == 0).sum()), dim), np.float16)
                emit(ids[h == 0], pa.table({C.TEXT_HASH: pa.array(h[h == 0]), C.EMBEDDING: _emb_array(zero)}))
        out[name] = (tmp, final)
    return out


def grounded(rd: RunDir, path: Path) -> dict:
    """Grounded-product rate: products matched to a catalogue item outside what the rationale saw of the user's
    history (item_ids[:-HISTORY_CUT]; one from it is a miss)."""
    from slim.text.grounding import rate
    from slim.text.prompts import training_prefix

    users = storage.read_table(rd.path(C.USERS_FILE), columns=[C.USER_ID, C.ITEM_IDS])
    hist = dict(zip(users.column(C.USER_ID).to_pylist(), users.column(C.ITEM_IDS).to_pylist()))
    g = pq.read_table(path, columns=[C.USER_ID, "item_ids"])
    ids = g.column(C.USER_ID).to_pylist()
    return rate([np.asarray(x, dtype=np.int64) for x in g.column("item_ids").to_pylist()],
                [training_prefix(hist.get(u, [])) for u in ids])
