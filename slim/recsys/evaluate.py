"""The `evaluate` stage: reload every trained run, score the test split (uni100, pop100, full) and write
reports/results.md + results.json (mean ± std over seeds, chance level beside) and plots/*.png."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim import metrics as M
from slim.columns import EVAL_PROTOCOLS, SPLITS
from slim.rundir import Manifest, RunDir

log = logging.getLogger(__name__)

STAGE = "evaluate"
SHOWN = ("NDCG@10", "Hit@10", "Hit@20")


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: str = "runs/default"
    protocols: tuple[Literal[EVAL_PROTOCOLS], ...] = ("uni100", "pop100", "full")  # checked at load
    split: Literal[SPLITS] = "test"
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


def aggregate(recs: list, protocols, num_items: int) -> dict:
    """Records (one per run) -> {backbone-variant: {protocol: {metric: [mean, std, n]}, targets_per_s: ...}}."""
    groups = defaultdict(list)
    for r in recs:
        groups[f"{r['backbone']}-{r['variant']}"].append(r)
    out = {"rows": {}, "chance": {p: M.chance_for(p, num_items) for p in protocols}}
    for key, rs in sorted(groups.items()):
        row = {"seeds": sorted(r["seed"] for r in rs)}
        for p in protocols:
            row[p] = {m: [float(np.mean([r["eval"][p][m] for r in rs])),
                          float(np.std([r["eval"][p][m] for r in rs])), len(rs)] for m in rs[0]["eval"][p]}
        tp = [r["targets_per_s"] for r in rs]
        row["targets_per_s"] = [float(np.mean(tp)), float(np.std(tp)), len(tp)]
        out["rows"][key] = row
    return out


def markdown(agg: dict, protocols, title: str) -> str:
    lines = [f"# {title}", ""]
    for p in protocols:
        ch = agg["chance"][p]
        lines += [f"## {p} (mean ± std over seeds; chance: " + ", ".join(f"{m} {ch[m]:.2f}" for m in SHOWN) + ")",
                  "", "| model | seeds | " + " | ".join(SHOWN) + " | train targets/s |",
                  "|---|---|" + "---|" * (len(SHOWN) + 1)]
        for key, row in agg["rows"].items():
            cells = [f"{row[p][m][0]:.2f} ± {row[p][m][1]:.2f}" for m in SHOWN]
            tp = row["targets_per_s"]
            lines.append(f"| {key} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {tp[0]:.0f} ± {tp[1]:.0f} |")
        lines.append(f"| chance | | " + " | ".join(f"{ch[m]:.2f}" for m in SHOWN) + " | |")
        lines.append("")
    return "\n".join(lines)


def plot(agg: dict, protocol: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(agg["rows"])
    mean = [agg["rows"][k][protocol]["NDCG@10"][0] for k in keys]
    std = [agg["rows"][k][protocol]["NDCG@10"][1] for k in keys]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(keys)), 3.5))
    ax.bar(keys, mean, yerr=std, capsize=3)
    ax.axhline(agg["chance"][protocol]["NDCG@10"], color="k", ls="--", label="chance")
    ax.set_ylabel(f"NDCG@10 ({protocol}, %)")
    ax.legend()
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: EvaluateConfig, force: bool = False) -> Manifest:
    from slim.recsys import data as D
    from slim.recsys.job import METRICS, MODELS_DIR, load_model
    from slim.recsys.train import evaluate

    rd = RunDir(cfg.run_dir)
    tm = rd.read_manifest("train")
    inputs = {"train": rd.upstream("train")}
    conf = {"protocols": list(cfg.protocols), "split": cfg.split}
    if not force and rd.is_current(STAGE, conf, inputs):
        return rd.read_manifest(STAGE)
    t0 = time.time()
    d = D.load(rd.root, tm.config["max_users"], tm.config["subsample_seed"])
    recs = []
    for rel in tm.outputs:
        model, spec = load_model(rd.root / rel)
        rec = json.loads((rd.root / rel / METRICS).read_text())
        rec["eval"] = evaluate(model, d, cfg.split, cfg.protocols, spec.max_len)
        recs.append(rec)
        log.info("%s %s", rel, {p: round(v["NDCG@10"], 2) for p, v in rec["eval"].items()})
    agg = aggregate(recs, cfg.protocols, d.num_items)
    agg["runs"] = [{k: r[k] for k in ("run", "backbone", "variant", "seed", "eval", "targets_per_s",
                                      "best_epoch", "epochs_run")} for r in recs]
    rep = rd.root / "reports"
    (rep / "plots").mkdir(parents=True, exist_ok=True)
    md = markdown(agg, cfg.protocols, f"Sequential recommenders, {cfg.split} split ({len(d.seqs)} users, "
                                      f"{d.num_items} items)")
    _atomic(rep / "results.json", json.dumps(agg, indent=2))
    _atomic(rep / "results.md", md)
    for p in cfg.protocols:
        plot(agg, p, rep / "plots" / f"ndcg10_{p}.png")
    m = Manifest(STAGE, conf, inputs, outputs=["reports/results.md", "reports/results.json", "reports/plots"],
                 counts={"runs": len(recs), "users": len(d.seqs)}, timings={"total_s": time.time() - t0})
    rd.write_manifest(m)
    print(md)
    return m


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
