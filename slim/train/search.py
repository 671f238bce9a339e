"""`train.search`: a Ray Tune search per row group (backbone x variant x loss x fusion x positions) before the seed
runs, so that every row of the report had the same chance to be good.

The fairness rule made literal: the trial configurations are drawn once from `search.seed` (`draw`), and every
group trains that same list, under the same scheduler, whatever its backbone or variant. A setting a group does not
have is left out of its trial (num_negatives under ce, the hidden size of text_match, dropout of a backbone without
one): two trials that then train the same model share one training.

Each trial is one run on the stage's own path (slim.train.trials): a single-process run of the normal loop in a Tune
trial (train.strategy fanout), or one Ray Train run started from a Tune trial (ddp, deepspeed); it reports
validation NDCG@10 under `train.valid_protocol` after every epoch, and ASHA stops the unpromising ones. A trial's
score is its best epoch's.
The driver writes each finished trial to train/search/<group>/<key>.json (key: the fingerprint of what the trial
trains on), so a killed search restarted with the same command trains only the trials without a file; the group's
choice goes to train/search/<group>.json and into that group's seed runs. The `sum` fusion's weight is not part of
the space: every seed run tunes it on validation after training, as without a search (loop.tune_sum).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slim.io import atomic, storage
from slim.io import columns as C
from slim.io.rundir import fingerprint
from slim.runtime.console import say
from slim.runtime.signals import off_main_thread
from slim.train.settings import METRIC, PLACEMENT, RunSettings
from slim.train.trials import release

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SearchSpace:
    lr: tuple[float, float] = (1e-4, 1e-2)  # Adam learning rate: log-uniform in [low, high]
    hidden: tuple[int, ...] = (32, 64, 128)  # ID embedding and state size: one of these
    dropout: tuple[float, float] = (0.0, 0.5)  # the backbone's dropout (gru4rec, sasrec): uniform in [low, high]
    weight_decay: tuple[float, float] = (1e-6, 1e-3)  # Adam L2 penalty: log-uniform in [low, high], or 0 (below)
    weight_decay_zero: float = 0.5  # share of the draws with no weight decay at all
    num_negatives: tuple[int, ...] = (1, 4, 16)  # bce groups: sampled negatives per target, one of these


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 0  # trial configurations per row group; 0 = no search (the shared settings of train)
    space: SearchSpace = SearchSpace()
    scheduler: Literal["asha", "none"] = "asha"  # asha: early-stop trials on validation NDCG@10; none: all finish
    grace_epochs: int = 2  # asha: epochs every trial trains before it can be stopped
    reduction_factor: int = 3  # asha: about 1 trial in this many goes on at each rung
    seed: int = 0  # draws the trial list (the same for every group) and seeds each trial's training


def draw(space: SearchSpace, trials: int, seed: int) -> list[dict]:
    """The trial configurations, the same for every group: every draw takes every value in a fixed order, so trial
    i is the same whatever the count (a search extended from 8 to 12 trials keeps its first 8)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        lr = math.exp(rng.uniform(math.log(space.lr[0]), math.log(space.lr[1])))
        hidden = int(space.hidden[rng.integers(len(space.hidden))])
        dropout = float(rng.uniform(*space.dropout))
        zero = rng.random() < space.weight_decay_zero
        wd = math.exp(rng.uniform(math.log(space.weight_decay[0]), math.log(space.weight_decay[1])))
        neg = int(space.num_negatives[rng.integers(len(space.num_negatives))])
        out.append({"lr": float(f"{lr:.4g}"), "hidden": hidden, "dropout": float(f"{dropout:.3g}"),
                    "weight_decay": 0.0 if zero else float(f"{wd:.3g}"), "num_negatives": neg})
    return out


def group_of(spec) -> str:
    """A run's row group: its name without the seed."""
    return spec.name.rsplit("-s", 1)[0]


def effective(spec, trial: dict) -> dict:
    """The part of a trial configuration that the group's model uses."""
    out = {"lr": trial["lr"], "weight_decay": trial["weight_decay"]}
    if spec.variant != "text_match":
        out["hidden"] = trial["hidden"]
    if "dropout" in spec.backbone_cfg:
        out["dropout"] = trial["dropout"]
    if spec.loss == "bce":
        out["num_negatives"] = trial["num_negatives"]
    return out


def apply(spec, hp: dict, seed=None):
    """The spec with a trial's (or the chosen) hyperparameters; seed: the trial's training seed."""
    kw = {k: v for k, v in hp.items() if k in ("lr", "weight_decay", "hidden", "num_negatives")}
    if "dropout" in hp:
        kw["backbone_cfg"] = {**spec.backbone_cfg, "dropout": hp["dropout"]}
    return dataclasses.replace(spec, **kw, **({} if seed is None else {"seed": seed}))


def trial_key(spec, run_fp, s: SearchConfig) -> str:
    """What a trial's result depends on: its run's fingerprint (run_fp(spec): the train stage's) and the scheduler
    (which decides its epochs)."""
    return fingerprint({"run": run_fp(spec), "scheduler": s.scheduler,
                        "grace": s.grace_epochs, "rf": s.reduction_factor})[:16]


def tuned(all_specs: list, d, text, uts: dict, root, run_fp, s: SearchConfig,
          shared: RunSettings) -> tuple[list, dict]:
    """Search every row group of all_specs -> (the specs with their group's chosen hyperparameters, the search's
    summary for the manifest and the report). run_fp(spec): a run's fingerprint (the stage's)."""
    trials = draw(s.space, s.trials, s.seed)
    groups: dict = {}
    for spec in all_specs:
        groups.setdefault(group_of(spec), spec)
    say(f"train.search: {len(groups)} group(s) x {s.trials} trials, the same {s.trials} for every group "
        f"({s.scheduler}, grace {s.grace_epochs} epochs)")
    chosen = {g: search_group(g, spec, trials, d, text, uts, root, run_fp, s, shared) for g, spec in groups.items()}
    out = [apply(spec, chosen[group_of(spec)]["hp"]) for spec in all_specs]
    summary = {"trials": s.trials, "scheduler": s.scheduler, "grace_epochs": s.grace_epochs,
               "reduction_factor": s.reduction_factor, "seed": s.seed, "max_epochs": shared.max_epochs,
               "valid_protocol": shared.valid_protocol, "space": dataclasses.asdict(s.space),
               "groups": {g: {k: c[k] for k in ("hp", "score", "trained_epochs", "distinct")}
                          for g, c in chosen.items()}}
    return out, summary


def search_group(group: str, spec, trials: list, d, text, uts: dict, root, run_fp, s: SearchConfig,
                 shared: RunSettings) -> dict:
    """One group's search: the trials without a result file are trained (resume), then the best is chosen
    (the highest score; a tie goes to the earlier trial) and written to train/search/<group>.json."""
    folder = storage.path(root) / C.SEARCH_DIR / group
    runs = [apply(spec, effective(spec, t), seed=s.seed) for t in trials]
    keys = [trial_key(r, run_fp, s) for r in runs]
    todo = {k: r for k, r in zip(keys, runs) if not (folder / f"{k}.json").exists()}
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # a trial's index (coinciding trials: the first)
    say(f"train.search {group}: {len(todo)} of {len(set(keys))} distinct trial(s) to train")
    if todo:
        done = [json.loads((folder / f"{k}.json").read_text())["history"] for k in dict.fromkeys(keys) if k not in todo]
        run_trials(todo, folder, d, text, uts.get((spec.variant, spec.rationale_field)), s, shared,
                   {k: f"{group}-trial{first[k]}" for k in todo}, done)
    res = [json.loads((folder / f"{k}.json").read_text()) for k in keys]
    best = max(range(len(res)), key=lambda i: (res[i]["score"], -i))
    rows = [{"trial": i, "key": k, "hp": effective(spec, t), "score": r["score"], "epochs": r["epochs"]}
            for i, (k, t, r) in enumerate(zip(keys, trials, res))]
    out = {"group": group, "trial": best, "hp": rows[best]["hp"], "score": res[best]["score"],
           "trained_epochs": sum(r["epochs"] for r in {k: r for k, r in zip(keys, res)}.values()),
           "distinct": len(set(keys)), "trials": rows}
    atomic.write_json(storage.path(root) / C.SEARCH_DIR / f"{group}.json", out)
    say(f"train.search {group}: trial {best} of {len(trials)} chosen, valid NDCG@10 {out['score']:.2f}; "
        + ", ".join(f"{k} {v:g}" for k, v in out["hp"].items()))
    return out


def run_trials(todo: dict, folder, d, text, ut, s: SearchConfig, shared: RunSettings, names: dict,
               finished: list) -> None:
    """Train the trials of todo (key -> spec) as one Tune experiment, on the fanout or the Ray Train path
    (slim.train.trials); each finished trial's file is written by the driver as it ends (the Tune experiment itself
    is scratch: the result files are the search's state), and the trial is logged to MLflow under names[key] when
    tracking is on. finished: the epoch histories of the group's trials done before (a resumed search)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from slim.runtime.raycluster import init_ray
    from slim.train.trials import placement

    init_ray(shared.ray_address, shared.num_cpus)
    keys, runs = list(todo), list(todo.values())
    sched = (ASHAScheduler(max_t=shared.max_epochs, grace_period=min(s.grace_epochs, shared.max_epochs),
                           reduction_factor=s.reduction_factor)
             if s.scheduler == "asha" else FIFOScheduler())
    if s.scheduler == "asha":
        _seen_by(sched, finished)
    runs_dir = folder / "_trials"  # the Ray Train path's files; a killed search's are stale
    storage.remove_tree(runs_dir)
    place = placement(runs, d, text, ut, shared, str(runs_dir))
    scratch = tempfile.mkdtemp(prefix="slim-tune-")
    try:
        # reuse_actors (fanout): one trial after another in the same process, not a new one (torch imported again)
        tuner = tune.Tuner(tune.with_resources(place.trainable, place.resources),
                           param_space={"i": tune.grid_search(list(range(len(runs))))},
                           tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=sched,
                                                       reuse_actors=place.reuse_actors,
                                                       max_concurrent_trials=place.at_once or None),
                           run_config=tune.RunConfig(name="search", storage_path=scratch, verbose=0,
                                                     callbacks=[_trial_files(keys, runs, folder, names, shared)]))
        with contextlib.redirect_stdout(io.StringIO()) as said:  # Tune's boxes name the scratch folder: the log
            grid = off_main_thread(tuner.fit)  # Tune's fit() takes SIGINT (and SIGUSR1) on the main thread
        log.info("ray tune, %s:\n%s", folder.name, said.getvalue())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        storage.remove_tree(runs_dir)
    if grid.errors:
        raise RuntimeError(f"train.search: {len(grid.errors)} trial(s) of {folder.name} failed; the first: "
                           f"{grid.errors[0]}")


def _seen_by(sched, histories: list) -> None:
    """A resumed search: ASHA's rungs get the finished trials' validation NDCG@10 at each milestone, as the
    interrupted run's scheduler had them, so the trials trained now are cut against the same field (without it,
    the first trial at a rung always goes on). Ray's rungs are internal: a Ray without them gets a plain ASHA."""
    for bracket in getattr(sched, "_brackets", []):
        for milestone, recorded in getattr(bracket, "_rungs", []):
            for n, h in enumerate(histories):
                if len(h) >= milestone:
                    recorded[f"finished-{n}"] = h[int(milestone) - 1][METRIC]


def _trial_files(*args) -> "_TrialFiles":
    """_TrialFiles as a ray.tune Callback, the class made here: importing this module (the train stage, --check)
    must not import Ray Tune."""
    from ray.tune import Callback

    return type("TrialFiles", (_TrialFiles, Callback), {})(*args)


class _TrialFiles:
    """In the driver: each trial's epochs as Tune reports them, and its result file once it ends (finished, or
    stopped by the scheduler); an errored trial gets none and is trained again by the next run. A mixin of Tune's
    Callback (_trial_files)."""

    def __init__(self, keys: list, runs: list, folder, names: dict, shared: RunSettings):
        from slim.runtime.tracking import Tracker

        self.keys, self.runs, self.folder, self.history, self.started = keys, runs, folder, {}, {}
        self.groups: dict = {}  # trial id -> its Ray Train run's placement group (the Ray Train path)
        self.names, self.valid = names, shared.valid_protocol
        self.tracker = Tracker(shared.tracking, shared.run_dir)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.groups[trial.trial_id] = result.get(PLACEMENT, "")  # the Ray Train path's (trials.release)
        self.history.setdefault(trial.trial_id, []).append(
            {"epoch": len(self.history.get(trial.trial_id, [])), METRIC: result[METRIC], "loss": result["loss"],
             "seconds": result["seconds"]})

    def on_trial_error(self, iteration, trials, trial, **info):
        release(self.groups.pop(trial.trial_id, ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        release(self.groups.pop(trial.trial_id, ""))  # a stopped trial's workers: their CPUs go back now
        i = trial.config["i"]
        h = self.history.get(trial.trial_id, [])
        ok = [e[METRIC] for e in h if math.isfinite(e["loss"]) and math.isfinite(e[METRIC])]
        spec, key = self.runs[i], self.keys[i]
        rec = {
            "key": key, "run": spec.name, "spec": dataclasses.asdict(spec),
            "score": max(ok) if ok else -1.0, "epochs": len(h), "stopped": len(h) < spec.epochs, "history": h,
            # from start to end as the driver saw it: the epochs and the trial's start-up (--check's estimate)
            "wall_s": time.monotonic() - self.started.get(trial.trial_id, time.monotonic())}
        atomic.write_json(self.folder / f"{key}.json", rec)
        track = {"run": self.names[key], "history": h, "best_valid_ndcg10": rec["score"], "epochs_run": len(h),
                 "valid_protocol": self.valid, "wall_seconds": rec["wall_s"]}
        self.tracker.train_run(spec, track, self.folder / f"{key}.json",
                               tags={"stage": "search_trial", "search_key": key})

