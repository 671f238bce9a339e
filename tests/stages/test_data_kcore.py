"""k-core after every filter: no user below `min_user_interactions` (nor `min_history`) and no item below
`min_item_interactions` in what the data stage writes, also when items without text or short users are dropped."""

import gzip
import json

import numpy as np
import pytest

from slim.io import columns as C
from slim.data import DataConfig, sources
from slim.data import stage as prepare


def write_sequences(root, seqs: dict, titles: dict):
    """A jsonl-sequences folder from {user: [item, ...]} (one day apart) and {item: title} ("" = no text)."""
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "sequences.jsonl.gz", "wt") as f:
        for u, items in seqs.items():
            f.write(json.dumps({"user_id": u, "item_ids": items, "timestamps": [86400 * k for k in range(len(items))]})
                    + "\n")
    with open(root / "items.tsv", "w") as f:
        f.write("ItemID\tTitle\n" + "".join(f"{i}\t{t}\n" for i, t in titles.items()))
    return root


def _input(root):
    """Random histories over a Zipf-ish catalogue, built to break a k-core filtered before the other filters:
    the three most popular items have no text (users with exactly 5 events lose some), and 40 two-item users
    hold most interactions of ten rare items (dropped as too short, they take those items to 2 events)."""
    rng = np.random.default_rng(11)
    pop = 1.0 / np.arange(1, 81) ** 0.9
    seqs = {f"u{u}": [int(i) for i in rng.choice(80, size=rng.integers(5, 9), p=pop / pop.sum(), replace=False)]
            for u in range(300)}
    for u in range(20):
        seqs[f"u{u}"].append(80 + u % 10)
    seqs.update({f"s{u}": [80 + u % 10, 80 + (u + 1) % 10] for u in range(40)})
    titles = {i: ("" if i < 3 else f"Item {i}") for i in range(90)}
    return write_sequences(root, seqs, titles)


@pytest.mark.parametrize("min_user,min_item", [(5, 5), (0, 5), (4, 8)])
def test_k_core_holds_after_all_filters(tmp_path, min_user, min_item):
    cfg = DataConfig(source="jsonl-sequences", path=str(_input(tmp_path / "src")), min_user_interactions=min_user,
                     min_item_interactions=min_item, on_bad_row="skip", missing_text="skip")
    problems = sources.Problems(cfg.on_bad_row)
    users, items = prepare.build_tables(cfg, prepare._read(cfg, problems), problems)
    lens = users.column(C.HISTORY_LEN).to_numpy()
    counts = np.bincount(np.concatenate(users.column(C.ITEM_IDS).to_numpy(zero_copy_only=False)))[1:]
    assert users.num_rows > 100 and len(counts) == items.num_rows
    assert lens.min() >= max(min_user, cfg.min_history)
    assert counts.min() >= min_item
    assert not set(items.column(C.RAW_ITEM_ID).to_pylist()) & {"0", "1", "2"}  # no text: dropped


def test_k_core_from_a_start_mask():
    from slim.data import sequences as S

    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    items = np.array([0, 1, 2, 0, 1, 2, 0, 1, 3])
    start = items != 3  # as if item 3 had no text: user 2 falls to 2 events, then items 0 and 1 to 2 users
    assert S.k_core(users, items, 3, 3, start).tolist() == [False] * 9
    assert S.k_core(users, items, 3, 2, start).tolist() == [True] * 6 + [False] * 3
