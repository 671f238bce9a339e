"""A small run directory with a finished `data` stage (users.parquet, items.parquet, manifest), written directly.

The data stage itself is tested in test_data.py; the student and encode tests need only its two tables, and
sampling candidates would cost a minute on 2 cores. `write_run_data` also serves the benchmarks (1M users).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir

WORDS = ("space", "racing", "puzzle", "dragon", "soccer", "zombie", "pixel", "quest", "ninja", "farm", "galaxy",
         "kart", "chess", "legend", "shadow", "robot", "island", "castle", "hero", "tactics")


def item_titles(num_items: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 3)).title() + f" {i}" for i in range(1, num_items + 1)]


def write_run_data(run_dir: str | Path, num_users: int, num_items: int = 50, mean_len: int = 8, seed: int = 0,
                   long_user: int | None = None, chunk: int = 100_000) -> Path:
    """users.parquet (streamed in chunks) + items.parquet + data/manifest.json. `long_user` gets 24 items with
    120-character titles, so its prompt is far longer than the others'."""
    rng = np.random.default_rng(seed)
    root = Path(run_dir)
    (root / C.DATA_DIR).mkdir(parents=True, exist_ok=True)
    titles = item_titles(num_items, seed)
    if long_user is not None:
        for i in range(num_items - 24, num_items):
            titles[i] = (titles[i] + " Deluxe Edition " * 10)[:120]
    items = pa.table({C.ITEM_ID: pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
                      C.RAW_ITEM_ID: [str(i) for i in range(num_items)], C.TITLE: titles,
                      C.CATEGORY: ["Games"] * num_items, C.BRAND: [""] * num_items, C.TEXT: titles,
                      C.POPULARITY: pa.array(np.ones(num_items, np.int64))})
    pq.write_table(items, root / C.ITEMS_FILE)
    schema = pa.schema([(C.USER_ID, pa.int64()), (C.ITEM_IDS, pa.list_(pa.int32())), (C.HISTORY_LEN, pa.int32())])
    with pq.ParquetWriter(root / C.USERS_FILE, schema) as w:
        for start in range(0, num_users, chunk):
            n = min(chunk, num_users - start)
            lens = rng.integers(max(3, mean_len - 4), mean_len + 5, n).astype(np.int32)  # [n]
            flat = rng.integers(1, max(2, num_items - 24) if long_user is not None else num_items + 1,
                                int(lens.sum())).astype(np.int32)
            lists = np.split(flat, np.cumsum(lens)[:-1])
            ids = np.arange(start, start + n, dtype=np.int64)
            if long_user is not None and start <= long_user < start + n:
                lists[long_user - start] = np.arange(num_items - 24 + 1, num_items + 1, dtype=np.int32)
                lens[long_user - start] = 24
            w.write_table(pa.table({C.USER_ID: ids, C.ITEM_IDS: pa.array(lists, pa.list_(pa.int32())),
                                    C.HISTORY_LEN: pa.array(lens)}, schema))
    RunDir(root).write_manifest(Manifest("data", {"generated": True, "users": num_users, "seed": seed}))
    return root
