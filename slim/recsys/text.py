"""Item-text embeddings for the `id_text` variant: the encode stage's, else all-MiniLM-L6-v2 computed here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from slim import columns as C
from slim.rundir import content_fingerprint

log = logging.getLogger(__name__)

CACHE_FILE = "models/item_text_minilm.npy"  # ours; embeddings/ belongs to the encode stage


def item_text_path(run_dir: str | Path) -> Path:
    root = Path(run_dir)
    enc = root / C.ITEM_EMB_FILE
    return enc if enc.exists() else root / CACHE_FILE


def item_text(run_dir: str | Path, encoder: str = "all-MiniLM-L6-v2", batch_size: int = 256) -> np.ndarray:
    """[N+1, D] float32, row i = item_id i, row 0 zeros, L2-normalised rows."""
    root = Path(run_dir)
    p = item_text_path(root)
    n = pq.read_metadata(root / C.ITEMS_FILE).num_rows
    if p.exists():
        emb = np.load(p).astype(np.float32)
        if emb.shape[0] != n + 1:
            raise ValueError(f"{p}: {emb.shape[0]} rows, expected items+1 = {n + 1}; rerun the encode stage")
        return emb
    from sentence_transformers import SentenceTransformer

    from slim.llm_models import resolve_encoder

    items = pq.read_table(root / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TEXT])
    ids = items.column(C.ITEM_ID).to_numpy()
    if not np.array_equal(ids, np.arange(1, n + 1)):
        raise ValueError(f"{root / C.ITEMS_FILE}: {C.ITEM_ID} must be 1..{n} in order")
    log.info("encoding %d item texts with %s (no encode-stage embeddings found)", n, encoder)
    model = SentenceTransformer(resolve_encoder(encoder), device="cpu")
    texts = [t or "" for t in items.column(C.TEXT).to_pylist()]
    vec = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.zeros((n + 1, vec.shape[1]), dtype=np.float16)
    emb[1:] = vec.astype(np.float16)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, emb)
    os.replace(tmp, p)
    return emb.astype(np.float32)


def fingerprint(run_dir: str | Path) -> str:
    p = item_text_path(run_dir)
    return content_fingerprint(p) if p.exists() else "missing"
