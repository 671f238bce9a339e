"""Item-text embeddings for the text variants: the encode stage's when it used the same encoder, else computed here
with the encode stage's encoder (slim.text.encoder), in this process.

`train.text_encoder` decides the vectors: the encode stage's encode/items.npy is used only when its finished
manifest names the same model; any other encoder is computed here once and cached per encoder.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage
from slim.recsys.data import RecDataError
from slim.io.rundir import content_fingerprint

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
CACHE_FILE = "models/item_text_minilm.npy"  # ours, for the default encoder; encode/ belongs to the encode stage


def _same_encoder(a: str, b: str) -> bool:
    def key(name: str) -> str:  # the spellings of one model: hub prefix optional, MiniLM's name in any case
        n = name.strip().removeprefix("sentence-transformers/")
        return n.lower() if n.lower() == DEFAULT_ENCODER.lower() else n

    return key(a) == key(b)


def cache_file(encoder: str) -> str:
    if _same_encoder(encoder, DEFAULT_ENCODER):
        return CACHE_FILE
    return f"models/item_text_{re.sub(r'[^A-Za-z0-9._-]+', '_', encoder).strip('_.')}.npy"


def item_text_path(run_dir: str | Path, encoder: str = DEFAULT_ENCODER) -> Path:
    root = storage.path(run_dir)
    enc, manifest = root / C.ITEM_EMB_FILE, root / C.ENCODE_DIR / C.MANIFEST
    if enc.exists() and manifest.exists():
        model = json.loads(manifest.read_text()).get("config", {}).get("model")
        if model is not None and _same_encoder(model, encoder):
            return enc
    return root / cache_file(encoder)


def item_text(run_dir: str | Path, encoder: str = DEFAULT_ENCODER, batch_size: int = 256) -> np.ndarray:
    """[N+1, D] float32, row i = item_id i, row 0 zeros, L2-normalised rows."""
    root = storage.path(run_dir)
    p = item_text_path(root, encoder)
    n = storage.read_metadata(root / C.ITEMS_FILE).num_rows
    if p.exists():
        emb = storage.load_npy(p).astype(np.float32)
        if emb.shape[0] != n + 1:
            raise RecDataError(f"{p}: {emb.shape[0]} rows, expected items+1 = {n + 1}; rerun the encode stage")
        return emb
    from slim.runtime.llm_models import resolve_encoder
    from slim.text.encoder import Encoder

    items = storage.read_table(root / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TEXT])
    ids = items.column(C.ITEM_ID).to_numpy()
    if not np.array_equal(ids, np.arange(1, n + 1)):
        raise RecDataError(f"{root / C.ITEMS_FILE}: {C.ITEM_ID} must be 1..{n} in order")
    log.info("encoding %d item texts with %s (no encode-stage embeddings from that model)", n, encoder)
    # the encode stage's encoder, in this process: the same truncation and the same zero vector for an empty text
    enc = Encoder(resolve_encoder(encoder), (C.TEXT,), max_seq_length=0, step3_share=0.75, threads=0, device="cpu")
    texts = np.array(items.column(C.TEXT).to_pylist(), dtype=object)
    emb = None
    for a in range(0, n, batch_size):
        e = enc({C.ITEM_ID: ids[a:a + batch_size], C.TEXT: texts[a:a + batch_size]})[f"emb_{C.TEXT}"]  # [B, D]
        if emb is None:
            emb = np.zeros((n + 1, e.shape[1]), dtype=np.float16)
        emb[1 + a:1 + a + len(e)] = e
    with atomic.writing(p) as tmp, open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, emb)
    return emb.astype(np.float32)


def fingerprint(run_dir: str | Path, encoder: str = DEFAULT_ENCODER) -> str:
    p = item_text_path(run_dir, encoder)
    return content_fingerprint(p) if p.exists() else "missing"
