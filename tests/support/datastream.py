"""Inputs and content digests that pin the data stage's output: the digests in tests/stages/test_data_stream.py were
computed by the in-memory data stage before the streaming one replaced it (commit 8e6c2ae), so a run prepared then
and a run prepared now are the same users, sequences, items and candidates."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from slim.io import columns as C


def _plain(v):
    return v.tolist()  # a tensor column's cells (Ray Data writes the negatives as one) come back as arrays


def table_digest(table, keys: list) -> str:
    """sha256 over the schema (names, types) and the rows sorted by `keys`: independent of files and row groups."""
    t = table.sort_by([(k, "ascending") for k in keys]).combine_chunks()
    h = hashlib.sha256()
    for f in t.schema:
        h.update(f"{f.name}:{f.type}\n".encode())
    for name in t.column_names:
        h.update(json.dumps(t.column(name).to_pylist(), ensure_ascii=False, default=_plain).encode())
    return h.hexdigest()


def run_digests(run_dir) -> dict:
    """Digests of users.parquet, items.parquet and the candidates folder of a data stage's output."""
    import ray.data  # noqa: F401  registers Ray's tensor type: the negatives' type then reads as it did when pinned
    root = Path(run_dir)
    return {
        "users": table_digest(pq.read_table(root / C.USERS_FILE), [C.USER_ID]),
        "items": table_digest(pq.read_table(root / C.ITEMS_FILE), [C.ITEM_ID]),
        "candidates": table_digest(pq.ParquetDataset(str(root / C.CANDIDATES_DIR)).read(),
                                   [C.USER_ID, C.SPLIT, C.PROTOCOL]),
    }


def write_ties(root: Path, num_users: int = 600, num_items: int = 150, seed: int = 5) -> Path:
    """A jsonl-sequences input that stresses ordering: user and item ids in mixed case, non-ASCII and emoji (their
    sorted order is code-point order), timestamps with many ties inside a user (ties keep the file order), repeated
    items, users out of order in the file, and a few items without a title."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    uprefix = ["u", "U", "é", "z", "", "😀", "ß", "Z"]
    iprefix = ["i", "I", "ï", ""]
    items = [f"{iprefix[k % 4]}{k}" for k in range(num_items)]
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.7
    pop /= pop.sum()
    users = [f"{uprefix[k % len(uprefix)]}{k}" for k in rng.permutation(num_users)]
    with gzip.open(root / "sequences.jsonl.gz", "wt", encoding="utf-8") as f:
        for u in users:
            n = int(rng.integers(2, 14))
            ids = [items[j] for j in rng.choice(num_items, size=n, p=pop)]
            ts = (1_400_000_000 + 86400 * rng.integers(0, 4, n)).tolist()  # ties: 4 distinct days at most
            f.write(json.dumps({"user_id": u, "item_ids": ids, "timestamps": ts}) + "\n")
    with open(root / "items.tsv", "w", encoding="utf-8") as f:
        f.write("ItemID\tTitle\n")
        for k, i in enumerate(items):
            f.write(f"{i}\t{'' if k % 37 == 5 else f'Item {k}'}\n")
    return root
