"""The user side of the encode stage: each rationale source (the student's, the teacher's) -> one vector file per
field (slim.encode.stage's Encoder actors), the products of step 3 matched to catalogue items, and the quality measures of
what was encoded (slim.text.quality), reported in the stage's summary and manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import atomic
from slim.io import shards
from slim.io import storage
from slim.io import columns as C
from slim.text.encoder import Encoder, pool
from slim.io.rundir import RunDir
from slim.runtime.console import Progress

if TYPE_CHECKING:  # the stage's config: only its fields are read here
    from slim.encode.stage import EncodeConfig

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


def _dataset(cfg: "EncodeConfig", rd: RunDir, source: str):
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


def encode_users(cfg: "EncodeConfig", rd: RunDir, out: Path, source: str, item_vecs: str, expected: int = 0) -> dict:
    """One rationale source -> users_<field>.parquet (+ <source>_grounding.parquet), written as batches arrive,
    with the quality measures of what was encoded (slim.text.quality). expected: its users (the progress line's total)."""
    from slim.text.quality import Tally

    ds, fields = _dataset(cfg, rd, source), source_fields(source)
    schema = pa.schema([(C.USER_ID, pa.int64()), (C.EMBEDDING, pa.list_(pa.float16()))])
    finals = {f: rd.path(SOURCE_FILES[source].format(field=f)) for f in fields}
    if cfg.ground_threshold > 0 and source != "history":
        finals["grounding"] = rd.path(C.GROUNDING_FILE.format(source=source))
    tmps = {f: atomic.tmp_path(p) for f, p in finals.items()}
    writers = {f: pq.ParquetWriter(tmps[f], GROUNDING_SCHEMA if f == "grounding" else schema) for f in tmps}
    counts = {"users": 0, **{f"{f}_truncated": 0 for f in fields}, **{f"{f}_empty": 0 for f in fields}}
    tally, prog = Tally(), Progress(f"encode ({source})", expected, "users")
    try:
        actors = pool(cfg, fields, item_vecs if "grounding" in writers else "")
        for b in ds.map_batches(Encoder, **actors).iter_batches(batch_format="numpy", batch_size=None):
            uid = pa.array(b[C.USER_ID].astype(np.int64))
            for f in fields:
                writers[f].write_table(pa.table({C.USER_ID: uid, C.EMBEDDING: _emb_array(b[f"emb_{f}"])}, schema))
                counts[f"{f}_truncated"] += int(b[f"cut_{f}"].sum())
                counts[f"{f}_empty"] += int(b[f"empty_{f}"].sum())
            if "grounding" in writers:
                writers["grounding"].write_table(pa.table({
                    C.USER_ID: uid, "products": [list(x) for x in b["products"]],
                    "item_ids": [list(map(int, x)) for x in b["product_items"]],
                    "sims": [list(map(float, x)) for x in b["product_sims"]]}, GROUNDING_SCHEMA))
            if source != "history":  # rationale quality means nothing for a list of titles
                tally.add([{C.RATIONALE: b[C.RATIONALE][i], C.STEP1: b[C.STEP1][i], C.STEP2: b[C.STEP2][i],
                            C.STEP3: b[C.STEP3][i], "ok": b[C.STATUS][i] == "ok"} for i in range(len(uid))])
            counts["users"] += len(uid)
            prog.update(counts["users"])
        prog.close()
    finally:
        for w in writers.values():
            w.close()
    quality = tally.result() if source != "history" else {}
    if "grounding" in tmps:
        quality.update(grounded(rd, tmps["grounding"]))
    return {**counts, "_quality": quality, "_tmp": {str(tmps[f]): str(finals[f]) for f in tmps}}


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
