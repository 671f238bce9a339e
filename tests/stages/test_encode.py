"""The encode stage: real all-MiniLM-L6-v2 in a Ray Data actor pool over items and hand-written rationale shards."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.encode.stage import EncodeConfig, run
from slim.text.encoder import fit_rationale
from slim.io.rundir import Manifest, RunDir
from slim.testing.rundata import item_titles, write_run_data

LONG = 2  # user whose rationale is far longer than the encoder's window


def _rationales(n: int) -> pa.Table:
    s1 = [f"The user likes puzzle and racing games, number {u}." for u in range(n)]
    s2 = ["1. Puzzle 2. Racing 3. Strategy 4. Indie 5. Arcade"] * n
    s3 = [f"Puzzle: Portal {u}, Tetris; Racing: Mario Kart, Forza" for u in range(n)]
    s1[LONG] = "The user enjoys many long detailed adventure games with rich stories. " * 40
    s1[4], s2[4], s3[4] = "", "", ""  # a failed row: empty text
    s3[0] = f"Puzzle: {item_titles(40)[6]}, Tetris; Racing: Mario Kart, Forza"  # item 7 of the catalogue by name
    text = [f"Step 1: {a}\nStep 2: {b}\nStep 3: {c}" if a else "" for a, b, c in zip(s1, s2, s3)]
    return pa.table({C.USER_ID: pa.array(np.arange(n, dtype=np.int64)), C.RATIONALE: text, C.STEP1: s1,
                     C.STEP2: s2, C.STEP3: s3, C.STATUS: ["ok"] * n})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = write_run_data(tmp_path_factory.mktemp("enc"), num_users=8, num_items=40)
    shards = d / C.STUDENT_SHARDS
    shards.mkdir(parents=True)
    t = _rationales(8)
    pq.write_table(t.slice(0, 5), shards / "part-a-000000.parquet")
    pq.write_table(t.slice(5), shards / "part-a-000001.parquet")
    RunDir(d).write_manifest(Manifest("student", {"hand": True}))
    return d


def test_fit_rationale_keeps_step3():
    from transformers import AutoTokenizer

    from slim.runtime.llm_models import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    head, tail = "Step 1: long summary words. " * 100, "Step 3: Portal, Tetris, Forza."
    text, cut = fit_rationale(tok, head, tail, 254, 0.75)
    assert cut and text.endswith(tail) and text.startswith("Step 1: long summary")
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 254
    short, cut = fit_rationale(tok, "Step 1: a", "Step 3: b", 254, 0.75)
    assert not cut and short == "Step 1: a\nStep 3: b"
    long_tail = "Step 3: " + "game " * 400  # step 3 alone too long: it keeps 3/4 of the window, head the rest
    text, cut = fit_rationale(tok, head, long_tail, 254, 0.75)
    assert cut and len(tok(text, add_special_tokens=False)["input_ids"]) <= 254 and "Step 3: game" in text


def _read(run_dir):
    items = np.load(run_dir / C.ITEM_EMB_FILE)
    users = {f: pq.read_table(run_dir / C.USER_EMB_FILE.format(field=f)).to_pandas().sort_values(C.USER_ID)
             for f in C.USER_EMB_FIELDS}
    return items, users


def test_encode_shapes_norms_and_determinism(run_dir, ray_local):
    cfg = EncodeConfig(run_dir=str(run_dir), batch_size=3)
    m = run(cfg, force=True)
    items, users = _read(run_dir)
    assert items.shape == (41, 384) and items.dtype == np.float16
    assert not items[0].any()  # padding row
    assert np.allclose(np.linalg.norm(items[1:].astype(np.float32), axis=1), 1, atol=2e-3)
    for f, t in users.items():
        assert list(t[C.USER_ID]) == list(range(8)), f
        e = np.stack(t[C.EMBEDDING].to_numpy()).astype(np.float32)  # [U, D]
        assert e.shape == (8, 384)
        norms = np.linalg.norm(e, axis=1)
        assert norms[4] == 0  # empty text -> zero vector
        assert np.allclose(np.delete(norms, 4), 1, atol=2e-3), f
    c = m.counts
    assert c["users"] == 8 and c["rationale_truncated"] == 1 and c["step1_truncated"] == 1
    assert c["step3_truncated"] == 0 and c["step3_empty"] == 1 and c["items"] == 40
    # step 3 survives in the truncated whole rationale: its embedding stays close to the step-3 embedding
    whole = np.stack(users["rationale"][C.EMBEDDING].to_numpy()).astype(np.float32)
    step3 = np.stack(users["step3"][C.EMBEDDING].to_numpy()).astype(np.float32)
    step1 = np.stack(users["step1"][C.EMBEDDING].to_numpy()).astype(np.float32)
    assert whole[LONG] @ step3[LONG] > 0.3 and whole[LONG] @ step1[LONG] < 0.99
    # quality measures and catalogue grounding of what was encoded
    q = m.extra["quality"]["student"]
    assert q["n"] == 8 and q["step3_empty"] == pytest.approx(12.5) and q["products_per_row"] == pytest.approx(28 / 8)
    g = pq.read_table(run_dir / C.GROUNDING_FILE.format(source="student")).to_pandas().sort_values(C.USER_ID)
    first = dict(zip(g.iloc[0]["products"], g.iloc[0]["item_ids"]))
    assert first[item_titles(40)[6]] == 7 and first["Tetris"] == 0  # its title finds it; a game not sold, none
    assert q["products"] == 28 and q["grounded"] + q["in_history"] == 1 and q["unmatched"] == 27
    # the same rows twice; an unchanged rerun is skipped by its manifest
    assert run(cfg).created == m.created
    run(cfg, force=True)
    items2, users2 = _read(run_dir)
    assert np.array_equal(items, items2)
    for f in users:
        assert np.array_equal(np.stack(users[f][C.EMBEDDING].to_numpy()), np.stack(users2[f][C.EMBEDDING].to_numpy()))


def test_small_block_pipeline_streams(tmp_path, ray_local):
    """read_parquet's block target reaches the operators after it: a 2,000-row file written as one row group
    comes out of a map in many small blocks (Ray Data's 128 MiB default gives one), and the context is restored."""
    import ray

    from slim.runtime.raycluster import read_parquet

    path = tmp_path / "one_group.parquet"
    pq.write_table(pa.table({C.USER_ID: np.arange(2000), C.RATIONALE: ["x" * 1000] * 2000}), path,
                   row_group_size=2000)  # ~2 MB in a single row group
    default = ray.data.DataContext.get_current().target_max_block_size
    ds = read_parquet(str(path), [C.USER_ID, C.RATIONALE], block_kib=64)
    assert ray.data.DataContext.get_current().target_max_block_size == default
    sizes = [len(b[C.USER_ID]) for b in ds.map_batches(lambda b: b, batch_size=16, batch_format="numpy")
             .iter_batches(batch_size=None, batch_format="numpy")]
    assert sum(sizes) == 2000 and len(sizes) >= 20, sizes  # ~64 rows (64 KiB) per block
    whole = ray.data.read_parquet(str(path)).map_batches(lambda b: b, batch_size=16, batch_format="numpy")
    assert len(list(whole.iter_batches(batch_size=None))) <= 2  # the default: one block for the file


ROWS = 6000


def _rows_read_ahead(path, folder, object_store_mib: int) -> int:
    """Rows through the first map while the consumer stalls after one batch: polled each second until the count
    reaches all ROWS or holds still for 3 s (at most 40 s)."""
    import time
    import uuid
    from pathlib import Path

    from slim.runtime.raycluster import read_parquet

    def mark(batch: dict) -> dict:  # nested: pickled by value, since workers cannot import the tests package
        Path(str(folder), f"{uuid.uuid4().hex}_{len(batch[C.USER_ID])}").touch()  # how far the pipeline has read
        return batch

    folder.mkdir()
    ds = read_parquet(str(path), [C.USER_ID, C.RATIONALE], block_kib=64, object_store_mib=object_store_mib)
    it = iter(ds.map_batches(mark, batch_size=None, batch_format="numpy")
              .iter_batches(batch_size=None, batch_format="numpy"))
    first = len(next(it)[C.USER_ID])
    n, still, t0 = -1, 0, time.monotonic()
    while n < ROWS and still < 3 and time.monotonic() - t0 < 40:
        time.sleep(1)
        m = sum(int(f.name.split("_")[1]) for f in folder.iterdir())
        n, still = m, (still + 1 if m == n else 0)
    assert first + sum(len(b[C.USER_ID]) for b in it) == ROWS  # and the capped pipeline still delivers every row
    return n


def test_object_store_budget_holds_reading_back(tmp_path, ray_local):
    """With object_store_mib, a pipeline whose consumer stalls reads ahead only until its queued blocks fill the
    budget; without it, the same pipeline reads the whole input into the object store. The setting is restored."""
    import ray

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({C.USER_ID: np.arange(ROWS), C.RATIONALE: ["x" * 1000] * ROWS}), path,
                   row_group_size=500)  # ~6 MB in 12 row groups
    options = ray.data.DataContext.get_current().execution_options
    capped = _rows_read_ahead(path, tmp_path / "capped", object_store_mib=2)
    assert ray.data.DataContext.get_current().execution_options is options
    assert capped <= 3000, capped  # ~2 MB of 1 KB rows (2,195 when measured), not the whole 6 MB
    assert _rows_read_ahead(path, tmp_path / "default", object_store_mib=0) == ROWS
