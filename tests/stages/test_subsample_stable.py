"""`data.max_users` and `train.max_users` draw by a hash of the raw user id (slim.io.keyhash), as the teacher does, so
a newer snapshot of the same source keeps (almost) the same subsample: adding a fraction x of users keeps at least
1 - 2x of it. The positional draw they replaced keeps about what chance keeps."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from slim.data import DataConfig
from slim.data import stage as prepare
from slim.io import columns as C
from slim.recsys import data as D

T0, DAY = 1_700_000_000, 86_400
CUT1, CUT2 = T0 + 20 * DAY, T0 + 40 * DAY
OLD, ADDED, SAMPLE = 2000, 100, 400  # users before CUT1, users added by CUT2 (5%), the subsample


def _source(root) -> dict:
    """OLD users with 5 events before CUT1, ADDED new users (raw ids between the old ones: "u0019x" sorts after
    "u0019") whose events all fall after CUT1; 300 items."""
    rng = np.random.default_rng(0)
    rows = [(f"u{k:04d}", f"i{rng.integers(300):03d}", T0 + int(d) * DAY)
            for k in range(OLD) for d in sorted(rng.choice(20, 5, replace=False))]
    rows += [(f"u{k * OLD // ADDED + 7:04d}x", f"i{rng.integers(300):03d}", T0 + (21 + d) * DAY)
             for k in range(ADDED) for d in range(5)]
    (root / "inter.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (root / "items.csv").write_text("item_id,title\n" + "".join(f"i{i:03d},Title {i}\n" for i in range(300)))
    return {"source": "interactions-table", "interactions": str(root / "inter.csv"),
            "items": str(root / "items.csv"), "num_negatives": 20, "min_item_interactions": 1}


def _raw(run) -> list:
    return pq.read_table(run / C.USERS_FILE, columns=[C.RAW_USER_ID]).column(0).to_pylist()


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("subsample")
    src = _source(tmp)
    out = {}
    for name, until in (("old", CUT1), ("new", CUT2)):
        for k in (0, SAMPLE):  # every user, and data.max_users
            run = tmp / f"{name}{k}"
            prepare.run(DataConfig(run_dir=str(run), until=until, max_users=k, **src))
            out[name, k] = run
    return out


def test_data_max_users_is_stable_across_snapshots(snapshots):
    every_old, every_new = _raw(snapshots["old", 0]), _raw(snapshots["new", 0])
    assert len(every_old) == OLD and len(every_new) == OLD + ADDED
    a, b = set(_raw(snapshots["old", SAMPLE])), set(_raw(snapshots["new", SAMPLE]))
    assert len(a) == len(b) == SAMPLE and a <= set(every_old)
    x = ADDED / OLD
    print(f"data.max_users {SAMPLE} of {OLD} users, +{x:.0%}: kept {len(a & b) / SAMPLE:.3f}")
    assert len(a & b) / SAMPLE >= 1 - 2 * x
    assert {u for u in b - a if not u.endswith("x")} == set()  # only new users displace old ones
    # the positional draw it replaced: default_rng(seed).choice over the surviving users' positions
    seed = DataConfig().seed
    pos = [set(np.array(every)[np.random.default_rng(seed).choice(len(every), SAMPLE, replace=False)])
           for every in (every_old, every_new)]
    print(f"the positional draw kept {len(pos[0] & pos[1]) / SAMPLE:.3f}")
    assert len(pos[0] & pos[1]) / SAMPLE < 0.5


def test_data_max_users_is_deterministic(snapshots, tmp_path):
    run = tmp_path / "again"
    prepare.run(DataConfig(run_dir=str(run), until=CUT1, max_users=SAMPLE, **_source(tmp_path)))
    for f in (C.USERS_FILE, C.ITEMS_FILE):
        assert pq.read_table(run / f).equals(pq.read_table(snapshots["old", SAMPLE] / f))


def test_train_max_users_is_stable_across_snapshots(snapshots):
    raw = {k: np.array(_raw(snapshots[k, 0])) for k in ("old", "new")}
    ids = {k: pq.read_table(snapshots[k, 0] / C.USERS_FILE, columns=[C.USER_ID]).column(0).to_numpy()
           for k in ("old", "new")}
    kept = {}
    for k in ("old", "new"):
        d = D.load(snapshots[k, 0], max_users=SAMPLE, seed=5)
        kept[k] = set(raw[k][np.searchsorted(ids[k], d.user_ids)])
        assert len(kept[k]) == SAMPLE and np.all(np.diff(d.user_ids) > 0)  # rows stay in users.parquet order
    print(f"train.max_users kept {len(kept['old'] & kept['new']) / SAMPLE:.3f}")
    assert len(kept["old"] & kept["new"]) / SAMPLE >= 1 - 2 * ADDED / OLD
    assert set(D.load(snapshots["old", 0], max_users=SAMPLE, seed=6).user_ids) != set(
        D.load(snapshots["old", 0], max_users=SAMPLE, seed=5).user_ids)  # the seed draws another sample
