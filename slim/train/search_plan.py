"""train.search's plan: its constraints and what `--check` says (trials, and the wall time estimated from the
epoch rates an earlier run in the run directory measured)."""

from __future__ import annotations

import json
import os

import numpy as np

from slim.io import columns as C
from slim.io import storage
from slim.train.search import SearchConfig, group_of
from slim.train.settings import RunSettings
from slim.train.trials import at_once as trials_at_once


def check(s: SearchConfig) -> None:
    """train.search's own constraints (stage.check: --check and every job say them before any stage runs)."""
    from slim.runtime.config import ConfigError

    sp = s.space
    bad = [f"train.search.space.{k}: {why}" for k, ok, why in (
        ("lr", 0 < sp.lr[0] <= sp.lr[1] if len(sp.lr) == 2 else False, "[low, high] with 0 < low <= high"),
        ("weight_decay", 0 < sp.weight_decay[0] <= sp.weight_decay[1] if len(sp.weight_decay) == 2 else False,
         "[low, high] with 0 < low <= high (weight_decay_zero draws the zeros)"),
        ("dropout", 0 <= sp.dropout[0] <= sp.dropout[1] < 1 if len(sp.dropout) == 2 else False,
         "[low, high] with 0 <= low <= high < 1"),
        ("weight_decay_zero", 0 <= sp.weight_decay_zero <= 1, "a share in [0, 1]"),
        ("hidden", bool(sp.hidden) and min(sp.hidden) > 0, "one or more sizes > 0"),
        ("num_negatives", bool(sp.num_negatives) and min(sp.num_negatives) > 0, "one or more counts > 0"))
        if not ok]
    if s.trials < 0 or s.grace_epochs < 1 or s.reduction_factor < 2:
        bad.append("train.search: trials >= 0, grace_epochs >= 1 and reduction_factor >= 2")
    if bad:
        raise ConfigError("; ".join(bad))


def expected_epochs(s: SearchConfig, top: int) -> float:
    """Epochs a trial trains on average when ASHA keeps about 1 in reduction_factor at each rung (grace,
    grace x rf, ...); every epoch up to top (train.epochs) without a scheduler. Patience may end trials sooner."""
    if s.scheduler != "asha":
        return float(top)
    at, keep, total = min(s.grace_epochs, top), 1.0, float(min(s.grace_epochs, top))
    while at < top:
        keep /= s.reduction_factor
        nxt = min(at * s.reduction_factor, top)
        total += keep * (nxt - at)
        at = nxt
    return total


def epoch_seconds(root, models_dir: str) -> dict:
    """Group -> measured seconds per epoch (training and validation) of the earlier runs (in models_dir) and trials
    in root."""
    got: dict = {}
    base = storage.path(root)
    for p in base.glob(f"{models_dir}/*/{C.METRICS_FILE}") if (base / models_dir).exists() else []:
        r = json.loads(p.read_text())
        if r.get("epochs_run"):
            s = r["train_seconds"] + sum(h.get("valid_s", 0.0) for h in r["history"])
            got.setdefault(r["run"].rsplit("-s", 1)[0], []).append(s / r["epochs_run"])
    for r in trial_files(root):
        got.setdefault(r["group"], []).extend(h["seconds"] for h in r["history"])
    return {g: float(np.mean(v)) for g, v in got.items() if v}


def trial_files(root) -> list:
    """Every finished trial's record in root (train/search/<group>/<key>.json), its group added."""
    base = storage.path(root)
    return [{**json.loads(p.read_text()), "group": p.parent.name}
            for p in (base.glob(f"{C.SEARCH_DIR}/*/*.json") if (base / C.SEARCH_DIR).exists() else [])]


def startup_seconds(root) -> float:
    """A trial's cost beyond its epochs (Tune starting it, the data reaching it, the last evaluation), the median
    over the earlier trials in root; 0 without any."""
    extra = [r["wall_s"] - sum(h["seconds"] for h in r["history"]) for r in trial_files(root) if "wall_s" in r]
    return max(0.0, float(np.median(extra))) if extra else 0.0


def plan_lines(s: SearchConfig, shared: RunSettings, runs: list, models_dir: str) -> list[str]:
    """--check: the number of trials and, from the epoch rates an earlier run measured, the search's wall time.
    runs: the stage's run specs (every seed: the seeds are counted from them)."""
    from slim.runtime.console import duration
    from slim.runtime.raycluster import local_cpus

    groups = sorted({group_of(x) for x in runs})
    seeds = len({x.seed for x in runs})
    lines = [f"search: {len(groups)} group(s) x {s.trials} trials = {len(groups) * s.trials} trials, the same "
             f"{s.trials} for every group ({s.scheduler}; then each group's best for {seeds} seed(s))"]
    rate = epoch_seconds(shared.run_dir, models_dir)
    if not rate:
        return lines + [f"search: no earlier run in {shared.run_dir} to time an epoch: no wall-time estimate"]
    mean, per = float(np.mean(list(rate.values()))), expected_epochs(s, shared.max_epochs)
    # as Tune places trials (slim.train.trials); a private cluster's CPUs: on a joined cluster set train.num_cpus
    at_once = trials_at_once(shared, local_cpus(shared.num_cpus), os.cpu_count() or 1)
    start = startup_seconds(shared.run_dir)
    total = sum((rate.get(g, mean) * per + start) * s.trials for g in groups) / at_once
    known = sum(g in rate for g in groups)
    return lines + [f"search: ~{duration(total)} wall ({per:.1f} of at most {shared.max_epochs} epochs per trial, "
                    f"{mean:.1f}s per epoch measured in {shared.run_dir} ({known} of {len(groups)} groups timed), "
                    + (f"{start:.1f}s start-up per trial measured, " if start else "")
                    + f"{at_once} trial(s) at a time)"]
