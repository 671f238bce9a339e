"""train.search (slim/train/search.py): a Ray Tune search per row group on a real local Ray cluster, tiny data.

The data: users walk the item ids in order (tests/stages/test_recsys.py), which a GRU4Rec learns in 3 epochs at a learning
rate of a few 1e-2 but barely at the default 1e-3: the planted signal the search must find.
"""

import dataclasses
import json
import re
import time

import pytest

from slim.io import columns as C
from slim.runtime.config import ConfigError
from slim.runtime.tracking import TrackingConfig
from slim.train import search as S
from slim.train import search_plan as P
from slim.train import stage as job
from tests.stages.test_recsys import _write_run

SPACE = S.SearchSpace(lr=(1e-4, 1e-1), hidden=(8, 16), num_negatives=(1, 2))
GROUPS = ("gru4rec-id-bce", "gru4rec-id-ce")


def _cfg(root, **kw):
    search = S.SearchConfig(trials=4, space=SPACE, grace_epochs=1, reduction_factor=2, seed=0)
    kw.setdefault("tracking", TrackingConfig(mlflow_uri=f"sqlite:///{root}/mlflow.db"))  # a real store, no server
    return job.TrainConfig(run_dir=str(root), backbones=("gru4rec",), variants=("id",), losses=("bce", "ce"),
                           seeds=(0, 1), hidden=16, max_len=10, epochs=3, patience=3, batch_size=64,
                           valid_protocol="full", test_protocols=("full",), search=search, **kw)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("search")
    _write_run(root, users=120)
    cfg = _cfg(root)
    t0 = time.monotonic()
    m = job.run(cfg)
    return root, dataclasses.replace(cfg, run_dir=str(root)), m, time.monotonic() - t0


def _group(root, g):
    return json.loads((root / C.SEARCH_DIR / f"{g}.json").read_text())


def test_draws_are_fixed_by_the_seed_and_extend():
    a = S.draw(SPACE, 8, 3)
    assert a == S.draw(SPACE, 8, 3) and a != S.draw(SPACE, 8, 4)
    assert S.draw(SPACE, 4, 3) == a[:4]  # a search extended to more trials keeps the first ones
    assert all(1e-4 <= t["lr"] <= 1e-1 and t["hidden"] in (8, 16) and t["num_negatives"] in (1, 2) for t in a)


def test_every_group_gets_the_same_trials_and_space(searched):
    root, cfg, m, _ = searched
    drawn = S.draw(SPACE, 4, 0)
    rows = {g: _group(root, g)["trials"] for g in GROUPS}
    assert all(len(r) == 4 for r in rows.values())
    for g, r in rows.items():  # each group trained the drawn list; ce has no negatives to sample
        for t, row in zip(drawn, r):
            want = {k: t[k] for k in ("lr", "hidden", "dropout", "weight_decay")}
            assert row["hp"] == (want if g.endswith("-ce") else {**want, "num_negatives": t["num_negatives"]})
    s = m.extra["search"]
    assert s["trials"] == 4 and s["space"] == dataclasses.asdict(SPACE) and sorted(s["groups"]) == list(GROUPS)
    # ASHA stopped some trials after their grace epoch, and no trial ran past train.epochs
    epochs = [row["epochs"] for g in GROUPS for row in rows[g]]
    assert max(epochs) <= 3 and min(epochs) == 1


def test_planted_learning_rate_is_found_and_beats_the_default(searched):
    from slim.recsys import data as D
    from slim.recsys.checkpoint import read_checkpoint
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    root, cfg, m, _ = searched
    best = _group(root, "gru4rec-id-bce")
    assert best["hp"]["lr"] >= 1e-2, best["trials"]
    # the default setting of train (lr 1e-3, hidden 16) on the same data, seed and epochs
    spec = RunSpec("gru4rec", "id", 0, hidden=16, max_len=10, epochs=3, patience=3, batch_size=64,
                   backbone_cfg=dataclasses.asdict(cfg.gru4rec))
    _, default = fit(spec, D.load(root), None, "full", test_protocols=())
    assert best["score"] > default["best_valid_ndcg10"] + 3.0, (best["score"], default["best_valid_ndcg10"])
    # every seed run of the group trained with the chosen setting, and the report lists it
    for seed in cfg.seeds:
        out = root / "models" / f"gru4rec-id-bce-s{seed}"
        saved = read_checkpoint(out)["spec"]
        assert {k: saved[k] for k in ("lr", "hidden", "weight_decay", "num_negatives")} == {
            k: best["hp"][k] for k in ("lr", "hidden", "weight_decay", "num_negatives")}
        assert saved["backbone_cfg"]["dropout"] == best["hp"]["dropout"]
    assert m.counts["trained_now"] == 4
    from slim.evaluate import stage as evaluate

    evaluate.run(evaluate.EvaluateConfig(run_dir=str(root), protocols=("full",)))
    md = (root / "reports" / "results.md").read_text()
    assert "## Hyperparameter search" in md and f"{best['hp']['lr']:g}" in md and "4 trials for every group" in md


def test_trials_and_seed_runs_are_tracked_in_mlflow(searched):
    from mlflow.tracking import MlflowClient

    root, cfg, _, _ = searched
    client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
    exp = client.get_experiment_by_name(str(root))
    runs = client.search_runs([exp.experiment_id], max_results=100)
    trials = sorted(r.info.run_name for r in runs if r.data.tags.get("stage") == "search_trial")
    assert trials == sorted(f"{g}-trial{i}" for g in GROUPS for i in range(4))
    seeds = sorted(r.info.run_name for r in runs if r.data.tags.get("stage") == "train")
    assert seeds == sorted(f"{g}-s{s}" for g in GROUPS for s in (0, 1))
    best = _group(root, "gru4rec-id-bce")
    run = next(r for r in runs if r.info.run_name == f"gru4rec-id-bce-trial{best['trial']}")
    assert float(run.data.params["lr"]) == best["hp"]["lr"] and run.data.tags["search_key"] == best["trials"][
        best["trial"]]["key"]
    assert run.data.metrics["best_valid_ndcg10"] == pytest.approx(best["score"])
    steps = client.get_metric_history(run.info.run_id, "valid_NDCG10")
    assert max(m.value for m in steps) == pytest.approx(best["score"]) and len(steps) == best["trials"][
        best["trial"]]["epochs"]


def test_killed_search_resumes_without_redoing_finished_trials(searched):
    root, cfg, m, _ = searched
    folder = root / C.SEARCH_DIR / "gru4rec-id-bce"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    choice = {g: _group(root, g)["hp"] for g in GROUPS}
    gone = sorted(before)[:2]  # the trials a kill interrupted: no result file
    for name in gone:
        (folder / name).unlink()
    (root / C.TRAIN_DIR / C.MANIFEST).unlink()  # the stage did not finish
    m2 = job.run(cfg)
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    assert sorted(after) == sorted(before)
    assert sorted(n for n in after if after[n] != before[n]) == gone  # only those trained again
    assert {g: _group(root, g)["hp"] for g in GROUPS} == choice
    assert m2.counts["trained_now"] == 0  # the seed runs of an unchanged choice are done


def test_check_counts_trials_and_estimates_wall_time(searched):
    root, cfg, _, wall = searched
    lines = P.plan_lines(cfg.search, job.run_settings(cfg), job.specs(cfg), job.MODELS_DIR)
    assert lines[0].startswith("search: 2 group(s) x 4 trials = 8 trials")
    assert "s per epoch measured in" in lines[1] and "start-up per trial measured" in lines[1]
    # the estimate is of the search's 8 trials: below what the search and the 4 seed runs took, not far below
    mins, secs = map(int, re.search(r"~(\d+)m(\d+)s wall", lines[1]).groups())
    assert wall / 5 < 60 * mins + secs < wall, (lines[1], wall)
    elsewhere = job.run_settings(dataclasses.replace(cfg, run_dir=str(root / "elsewhere")))
    assert "no earlier run" in P.plan_lines(cfg.search, elsewhere, job.specs(cfg), job.MODELS_DIR)[1]


def test_asha_expected_epochs():
    search = S.SearchConfig(trials=1, grace_epochs=2, reduction_factor=3)
    assert P.expected_epochs(search, 20) == pytest.approx(2 + 4 / 3 + 12 / 9 + 2 / 27)  # rungs at 2, 6, 18, then 20
    assert P.expected_epochs(S.SearchConfig(trials=1, scheduler="none"), 20) == 20


def test_search_refuses_bad_spaces(tmp_path):
    job.check(dataclasses.replace(_cfg(tmp_path), strategy="ddp"))  # both paths search
    bad = S.SearchConfig(trials=2, space=S.SearchSpace(lr=(1e-2, 1e-3)))
    with pytest.raises(ConfigError, match=r"train.search.space.lr"):
        job.check(dataclasses.replace(_cfg(tmp_path), search=bad))


@pytest.mark.slow  # three Ray Train runs: 155 s on this idle 2-core machine (324 s under a benchmark's load)
def test_search_on_the_ray_train_path_stops_trials_and_gives_their_cpus_back(tmp_path, ray_local):
    """strategy=ddp: each trial is a 2-worker Ray Train run. Search seed 10 draws a good learning rate (0.074) then a
    poor one (0.00026): rank 0's epoch reports reach ASHA, which stops the second trial after its grace epoch; the
    stopped run's workers give their CPUs back (Ray would hold its placement group until the job ends); the seed
    run trains the chosen setting on Ray Train."""
    import ray

    from slim.recsys.checkpoint import read_checkpoint

    _write_run(tmp_path, users=120)
    search = dataclasses.replace(_cfg(tmp_path).search, trials=2, seed=10)
    cfg = dataclasses.replace(_cfg(tmp_path, tracking=TrackingConfig()), losses=("ce",), seeds=(0,), search=search,
                              strategy="ddp", num_workers=2, cpus_per_run=1)
    m = job.run(cfg)
    best = _group(tmp_path, "gru4rec-id-ce")
    assert [t["hp"]["lr"] for t in best["trials"]] == [0.07379, 0.0002557]
    assert best["trial"] == 0 and [t["epochs"] for t in best["trials"]] == [3, 1], best["trials"]
    for t in best["trials"]:
        rec = json.loads((tmp_path / C.SEARCH_DIR / "gru4rec-id-ce" / f"{t['key']}.json").read_text())
        assert [h["epoch"] for h in rec["history"]] == list(range(rec["epochs"]))
        assert all(h["seconds"] > 0 and h["loss"] > 0 for h in rec["history"])  # rank 0's, not another rank's 0s
    assert best["score"] > best["trials"][1]["score"] + 10
    assert not (tmp_path / C.SEARCH_DIR / "gru4rec-id-ce" / "_trials").exists()  # the trials' Ray Train files
    deadline = time.monotonic() + 20  # every CPU free again: no trial's workers left holding theirs
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    saved = read_checkpoint(tmp_path / "models" / "gru4rec-id-ce-s0")
    assert saved["spec"]["lr"] == 0.07379 and m.extra["search"]["groups"]["gru4rec-id-ce"]["hp"] == best["hp"]
    metrics = json.loads((tmp_path / "models" / "gru4rec-id-ce-s0" / C.METRICS_FILE).read_text())
    assert metrics["strategy"] == "ddp" and metrics["workers"] == 2


def test_resumed_asha_cuts_against_the_finished_trials():
    """What a resumed search feeds ASHA (search._seen_by): a trial below the finished ones at a rung is stopped
    there; with no finished trials fed, the first trial at a rung always goes on."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def first_result(histories):
        sched = ASHAScheduler(max_t=3, grace_period=1, reduction_factor=2)
        S._seen_by(sched, histories)
        return sched._brackets[0].on_result(SimpleNamespace(trial_id="new"), 1, 1.0)

    finished = [[{S.METRIC: 5.0}, {S.METRIC: 6.0}], [{S.METRIC: 4.0}]]
    assert first_result(finished) == TrialScheduler.STOP
    assert first_result([]) == TrialScheduler.CONTINUE
    assert first_result([[{S.METRIC: 0.5}]]) == TrialScheduler.CONTINUE  # better than the field: goes on
