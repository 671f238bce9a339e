"""A finished `data` stage written directly (users, items, manifest), so teacher tests need no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir

BRANDS = ("Nintendo", "Sony", "Sega", "")
CATS = ("Action", "RPG", "Puzzle", "")


def write_data_stage(root: Path, num_users: int, num_items: int = 60, seed: int = 0) -> RunDir:
    rng = np.random.default_rng(seed)
    lens = rng.integers(4, 30, num_users)
    hist = [rng.choice(np.arange(1, num_items + 1), n, replace=False).astype(np.int32) for n in lens]
    users = pa.table({
        C.USER_ID: pa.array(np.arange(num_users, dtype=np.int64)),
        C.RAW_USER_ID: [f"u{i}" for i in range(num_users)],
        C.ITEM_IDS: pa.array([h.tolist() for h in hist], pa.list_(pa.int32())),
        C.TIMESTAMPS: pa.array([list(range(len(h))) for h in hist], pa.list_(pa.int64())),
        C.HISTORY_LEN: pa.array(lens.astype(np.int32)),
        C.VALID_ITEM: pa.array([int(h[-2]) for h in hist], pa.int32()),
        C.TEST_ITEM: pa.array([int(h[-1]) for h in hist], pa.int32()),
    })
    titles = [f"Game {i}: The Quest" for i in range(1, num_items + 1)]
    cats = [CATS[i % 4] for i in range(num_items)]
    brands = [BRANDS[i % 4] for i in range(num_items)]
    texts = [". ".join(p for p in (t, f"Category: {c}" if c else "", f"Brand: {b}" if b else "") if p)
             for t, c, b in zip(titles, cats, brands)]
    items = pa.table({
        C.ITEM_ID: pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
        C.RAW_ITEM_ID: [str(i) for i in range(num_items)],
        C.TITLE: titles, C.CATEGORY: cats, C.BRAND: brands, C.TEXT: texts,
        C.POPULARITY: pa.array(np.ones(num_items, dtype=np.int64)),
    })
    rd = RunDir(root)
    d = rd.stage_dir("data")
    pq.write_table(users, d / "users.parquet")
    pq.write_table(items, d / "items.parquet")
    rd.write_manifest(Manifest("data", {"generated": num_users, "seed": seed}, counts={"users": num_users}))
    return rd
