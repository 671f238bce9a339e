"""A student refresh costs what changed (issue 39, 3): rows are keyed by model, sampling and prompt text, so a new
snapshot regenerates exactly the users whose prompt changed, generates the new ones, archives those gone (and gives
a returning user its row back), and reuses every other row as it was; a sampling change regenerates all, and that
refresh killed after a shard and restarted finishes it with no duplicate and no user missing. The hf engine with the
tiny real adapter, a few tokens per row; distill.refresh=keep without training."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.io import shards as S
from slim.io.rundir import Manifest, RunDir
from slim.student import stage as G
from slim.student.stage import SamplingConfig, StudentConfig, run
from slim.testing.rundata import write_run_data
from slim.testing.adapter import make_tiny_adapter

N = 6


def _cfg(run_dir, cache_dir, **kw) -> StudentConfig:
    base = dict(run_dir=str(run_dir), engine="hf", batch_size=3, shard_rows=2, max_model_len=512, hf_threads=1,
                sampling=SamplingConfig(max_tokens=6), cache_dir=cache_dir)
    return StudentConfig(**{**base, **kw})


def _snapshot(run_dir, tag: str, append: dict | None = None, drop=(), add: dict | None = None) -> None:
    """A new snapshot as the data stage writes it: users keep their ids, `append` {user: item} gets one more
    interaction, `drop` users are gone (their ids stay unused), `add` {user: items} are new; a new data manifest."""
    users = pq.read_table(run_dir / C.USERS_FILE).to_pylist()
    rows = [{**u, C.ITEM_IDS: u[C.ITEM_IDS] + [append[u[C.USER_ID]]]} if u[C.USER_ID] in (append or {}) else u
            for u in users if u[C.USER_ID] not in drop]
    rows += [{C.USER_ID: u, C.ITEM_IDS: items, C.HISTORY_LEN: len(items)} for u, items in (add or {}).items()]
    for r in rows:
        r[C.HISTORY_LEN] = len(r[C.ITEM_IDS])
    schema = pq.read_schema(run_dir / C.USERS_FILE)
    pq.write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r[C.USER_ID]), schema=schema),
                   run_dir / C.USERS_FILE)
    RunDir(run_dir).write_manifest(Manifest("data", {"generated": True, "snapshot": tag}))


def _rows(folder) -> dict:
    """user -> (rationale, written_at, row_key, prompt_hash) of the latest row; also checks one raw row per user."""
    t = S.read_latest(folder, schema=G.SCHEMA)
    if folder.name != "_archive":
        assert S.read_shards(folder, columns=[C.USER_ID]).num_rows == t.num_rows  # no duplicate left
    d = t.to_pydict()
    return {u: (d[C.RATIONALE][i], d[C.WRITTEN_AT][i], d[C.ROW_KEY][i], d[C.PROMPT_HASH][i])
            for i, u in enumerate(d[C.USER_ID])}


def _histories(run_dir) -> dict:
    t = pq.read_table(run_dir / C.USERS_FILE, columns=[C.USER_ID, C.ITEM_IDS]).to_pydict()
    return dict(zip(t[C.USER_ID], t[C.ITEM_IDS]))


def _refresh(m) -> tuple:
    return tuple(m.counts[k] for k in ("reused", "regenerated", "new", "restored", "dropped", "generated"))


class Killed(Exception):
    """Stands for a kill of the job right after a shard was written (the shards on disk are what a kill leaves)."""


@pytest.fixture
def run_dir(tmp_path_factory, cache_dir):
    d = write_run_data(tmp_path_factory.mktemp("refresh"), num_users=N, num_items=40, mean_len=6)
    make_tiny_adapter(d / C.STUDENT_ADAPTER, cache_dir)
    return d


# slow: five student runs of the real hf engine (generation, a killed refresh and its restart): minutes on 2 idle
# cores, 17 min loaded; `make test-slow` runs it
@pytest.mark.slow
def test_refresh_regenerates_exactly_what_changed(run_dir, cache_dir, ray_local, monkeypatch):
    out, archive = run_dir / C.STUDENT_SHARDS, run_dir / C.STUDENT_ARCHIVE
    cfg = _cfg(run_dir, cache_dir)
    m = run(cfg)
    assert _refresh(m) == (0, 0, N, 0, 0, N) and m.counts["users"] == N
    first = _rows(out)
    assert sorted(first) == list(range(N)) and all(r[2] and r[3] and r[1] for r in first.values())
    assert len({r[3] for r in first.values()}) == N  # a prompt hash per prompt

    _snapshot(run_dir, "same users")  # a new snapshot (data fingerprint) where no user's prompt changed
    files = S.shard_files(out)
    m = run(cfg)
    assert m.counts["generated"] == 0 and _refresh(m) == (N, 0, 0, 0, 0, 0)
    assert _rows(out) == first and S.shard_files(out) == files  # nothing rewritten

    gone, new = 2, N  # ids of a user who leaves and of one who arrives
    history = _histories(run_dir)[gone]
    _snapshot(run_dir, "k changed", append={0: 39, 1: 40}, drop={gone}, add={new: [5, 6, 7, 8, 9]})
    m = run(cfg)
    assert _refresh(m) == (N - 3, 2, 1, 0, 1, 3) and m.counts["users"] == N
    now = _rows(out)
    assert sorted(now) == [u for u in range(N + 1) if u != gone]
    kept = [u for u in range(N) if u not in (0, 1, gone)]
    assert {u: now[u] for u in kept} == {u: first[u] for u in kept}  # byte-identical, same write times
    for u in (0, 1):  # a longer history: a new prompt, a new key, a new row
        assert now[u][1] > first[u][1] and now[u][2] != first[u][2] and now[u][3] != first[u][3]
    assert _rows(archive) == {gone: first[gone]}  # archived as it was, not deleted

    _snapshot(run_dir, "back", add={gone: history})  # the user returns with the same history
    m = run(cfg)
    assert _refresh(m) == (N, 0, 0, 1, 0, 0)  # its archived row comes back, nothing generated
    assert _rows(out)[gone] == first[gone]

    # Another sampling setting changes every key. That refresh is killed after its first shard (shards of one row)
    # and restarted: it finishes with every user once, the killed run's row kept, the counts the whole refresh's.
    resample = _cfg(run_dir, cache_dir, sampling=SamplingConfig(max_tokens=5), shard_rows=1, batch_size=1)
    before = _rows(out)
    real = G.write_shard

    def killed(folder, table):
        real(folder, table)
        raise Killed

    monkeypatch.setattr(G, "write_shard", killed)
    with pytest.raises(Killed):
        run(resample)
    monkeypatch.undo()
    assert not (out / C.MANIFEST).exists()
    cut = S.read_latest(out, schema=G.SCHEMA).to_pydict()
    fresh = {u: w for u, w in zip(cut[C.USER_ID], cut[C.WRITTEN_AT]) if w > max(r[1] for r in before.values())}
    assert len(fresh) == 1  # one row made it to a shard before the kill
    m = run(resample)
    assert _refresh(m) == (0, N + 1, 0, 0, 0, N) and m.counts["superseded"] == N + 1
    assert m.extra["generation"]["sampling"]["max_tokens"] == 5
    rows = _rows(out)  # also: one row per user, no duplicate
    assert sorted(rows) == sorted(before) and all(rows[u][2] != before[u][2] for u in rows)
    assert all(rows[u][1] == w for u, w in fresh.items())  # not generated twice


def test_distill_refresh_keep_keeps_the_adapter(tmp_path):
    """distill.refresh=keep: a new snapshot does not retrain an adapter trained with the same settings; the manifest
    is current for the new snapshot and names the one it was trained on. retrain (or other settings) trains."""
    import dataclasses

    from slim.distill import stage as D
    from slim.distill.refresh import keep as kept

    rd = RunDir(tmp_path)
    (tmp_path / C.STUDENT_ADAPTER).mkdir(parents=True)
    (tmp_path / C.STUDENT_ADAPTER / "adapter_config.json").write_text("{}")
    rd.write_manifest(Manifest(C.TEACHER_DIR, {"rows": 1}))

    def snapshot(n):
        rd.write_manifest(Manifest(C.DATA_DIR, {"snapshot": n}))
        return {C.DATA_DIR: rd.upstream(C.DATA_DIR), C.TEACHER_DIR: rd.upstream(C.TEACHER_DIR)}

    keep = D.DistillConfig(run_dir=str(tmp_path), refresh="keep")
    retrain = dataclasses.replace(keep, refresh="retrain")
    old = snapshot(1)
    rd.write_manifest(Manifest(D.STAGE, D.stage_config(retrain), old, outputs=[C.STUDENT_ADAPTER],
                               extra={"refresh": "trained"}))  # as training writes it: trained on its own inputs
    new = snapshot(2)
    assert kept(retrain, rd, D.stage_config(retrain), new) is None  # retrain: a new snapshot trains
    m = D.run(keep)  # returns before Ray or a model is touched
    assert m.extra["refresh"] == "kept" and m.extra["trained_on"]["inputs"] == old
    assert rd.is_current(D.STAGE, D.stage_config(keep), dict(new))
    other = dataclasses.replace(keep, lr=1e-3)
    assert kept(other, rd, D.stage_config(other), new) is None  # other settings: another adapter
    old_again = snapshot(1)  # only `refresh` changes on the snapshot it was trained on: relabelled, not retrained
    m = kept(retrain, rd, D.stage_config(retrain), old_again)
    assert m is not None and m.extra["refresh"] == "trained"
    assert rd.read_manifest(D.STAGE).config["refresh"] == "retrain"
