"""The `evaluate` stage: reload every trained run, rank the test split (uni100, pop100, full ranking with the
user's history excluded and kept) and write reports/results.md + results.json (mean ± std over seeds, chance
level beside every table, SLIM's gains with paired tests over users) and reports/plots/*.png."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim.io import atomic
from slim.io import columns as C
from slim.recsys import metrics
from slim.io.columns import EVAL_PROTOCOLS, SPLITS
from slim.evaluate import plots
from slim.recsys import report
from slim.runtime.console import say
from slim.runtime.tracking import Tracker, TrackingConfig
from slim.recsys.summary import scale_line
from slim.io.rundir import Manifest, RunDir, peak_rss_mb

log = logging.getLogger(__name__)

STAGE = C.EVALUATE_DIR
HEADLINE = "full"  # full ranking: sampled metrics can reorder models (Krichene & Rendle 2020)


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: str = "runs/default"
    protocols: tuple[Literal[EVAL_PROTOCOLS], ...] = EVAL_PROTOCOLS  # checked at load
    split: Literal[SPLITS] = "test"  # which held-out item is ranked: valid (the second last) or test (the last)
    block_users: int = 50_000  # users per Ray task when ranking (one block: ranked in the driver)
    # torch threads of the driver's ranking (one block); 0 = one, as each block's Ray task gets one core: on a
    # shared 2-core machine one thread per core made the ranking several times slower (bench/results/evaluate.md).
    # On an idle machine set it to the cores the driver may use.
    threads: int = 0
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    # MLflow tracking of the report and plots (slim.runtime.tracking); the top-level `tracking:` unless set here
    tracking: TrackingConfig = TrackingConfig()


def chance_levels(d, split: str, protocols) -> dict:
    """Chance per protocol from the candidates each user actually ranks."""
    out = {}
    for p in protocols:
        if p.startswith("full"):
            sizes = metrics.full_sizes(d.num_present, d.inputs(split), d.targets(split), exclude_history=(p == "full"))
            out[p] = metrics.chance_mean(sizes)
        else:
            out[p] = metrics.chance(d.candidates.width((split, p)))
    return out


def rank_runs(rd: RunDir, outputs: list, d, split: str, protocols, block_users: int = 50_000) -> tuple:
    """Every run -> its record with eval metrics; (loss, row) -> {protocol: [S, U] ranks}; (loss, row) -> [S, U, 10];
    (variant, field) -> the UserText read for the rationale runs."""
    from slim.recsys import usertext
    from slim.recsys.blocks import BlockRanker
    from slim.recsys.checkpoint import METRICS, load_model

    ranker = BlockRanker(d, block_users)  # the users' blocks go to the object store once, for every run
    recs, rk, top, uts = [], defaultdict(lambda: defaultdict(list)), defaultdict(list), {}
    lens = np.array([len(s) for s in d.seqs])
    for rel in outputs:
        model, spec = load_model(rd.root / rel)
        rec = json.loads((rd.root / rel / METRICS).read_text())
        ut = None
        if spec.rationale_field:
            k = (spec.variant, spec.rationale_field)
            ut = uts[k] if k in uts else uts.setdefault(k, usertext.load(rd.root, d.user_ids, lens, *k))
        r = ranker.ranks(model, split, protocols, spec.max_len, ut, top=10)
        rec["eval"] = {p: metrics.metrics_from_ranks(r[p]) for p in protocols}
        key = (rec["loss"], report.row_key(rec))
        for p in protocols:
            rk[key][p].append(r[p])
        top[key].append(r["top"])
        recs.append(rec)
        log.info("%s %s", rel, {p: round(v["NDCG@10"], 2) for p, v in rec["eval"].items()})
    rk = {k: {p: np.stack(v) for p, v in ps.items()} for k, ps in rk.items()}
    return recs, rk, {k: np.stack(v) for k, v in top.items()}, uts


def per_user(rk: dict, mask: Optional[np.ndarray] = None) -> dict:
    """(loss, 'bb-variant') -> {protocol: [U] seed-averaged NDCG@10}, keyed (loss, backbone, variant) for tests."""
    out = {}
    for (loss, key), ps in rk.items():
        if key.startswith("text_match"):
            continue
        bb, v = key.split("-", 1)
        out[(loss, bb, v)] = {p: report.ndcg10(r).mean(0) if mask is None else report.ndcg10(r).mean(0)[mask]
                              for p, r in ps.items()}
    return out


def subset_recs(recs: list, rk: dict, mask: np.ndarray, protocols) -> list:
    """Records re-scored on a subset of users (per seed, in the order rank_runs saw them)."""
    seen, out = defaultdict(int), []
    for rec in recs:
        key = (rec["loss"], report.row_key(rec))
        i = seen[key]
        seen[key] += 1
        if rec["variant"] in ("id", "id_text", "slim", "slim_teacher", "history_text"):
            out.append({**rec, "eval": {p: metrics.metrics_from_ranks(rk[key][p][i][mask]) for p in protocols}})
    return out


def stage_config(cfg: EvaluateConfig) -> dict:
    """What decides the reports (not where or how the ranking runs)."""
    return {"protocols": list(cfg.protocols), "split": cfg.split}


def run(cfg: EvaluateConfig, force: bool = False) -> Manifest:
    from slim.recsys import data

    rd = RunDir(cfg.run_dir)
    inputs = {C.TRAIN_DIR: rd.upstream(C.TRAIN_DIR)}
    tm = rd.read_manifest(C.TRAIN_DIR)
    conf = stage_config(cfg)
    if not force and rd.is_current(STAGE, conf, inputs):
        return rd.read_manifest(STAGE)
    t0 = time.time()
    from slim.runtime.threads import torch_threads

    torch_threads(cfg.threads)  # the driver ranks a single block itself (slim.recsys.blocks)
    d = data.load(rd.root, tm.config["max_users"], tm.config["subsample_seed"])
    if len(d.seqs) > cfg.block_users:  # ranked in Ray tasks, block by block
        from slim.runtime.raycluster import init_ray

        init_ray(cfg.ray_address, cfg.num_cpus)
    t_rank = time.time()
    recs, rk, top, uts = rank_runs(rd, tm.outputs, d, cfg.split, cfg.protocols, cfg.block_users)
    t_rank = time.time() - t_rank
    res = {"users": len(d.seqs), "items": d.num_items, "split": cfg.split,
           "chance": chance_levels(d, cfg.split, cfg.protocols), "rows": report.aggregate(recs, cfg.protocols),
           "gains": report.gains(per_user(rk), cfg.protocols),
           "users_without_rationale": tm.extra.get("users_without_rationale", {}),
           "valid_protocol": tm.config.get("valid_protocol", "uni100"),
           "rationale_positions": tm.config.get("rationale_positions", ["after_prefix"]),
           **({"search": tm.extra["search"]} if tm.extra.get("search") else {})}  # train.search's choice per group
    res.update(teacher_subset(recs, rk, uts, cfg.protocols))
    res["student_model"] = student_model(rd)
    bucket = plots.popularity_buckets(np.bincount(np.concatenate(d.inputs("valid")), minlength=d.num_items + 1))
    res["popular_share"] = {}  # % of full-ranking top-10 in the most popular fifth of the items (popularity bias)
    for (loss, key), t in top.items():
        res["popular_share"].setdefault(loss, {})[key] = float(100 * (bucket[t] == 0).mean())
    rep = rd.path("reports")
    (rep / "plots").mkdir(parents=True, exist_ok=True)
    res["plots"] = write_plots(rep / "plots", d, rd, res, rk, top, cfg)
    res["runs"] = [{k: r.get(k) for k in ("run", "backbone", "variant", "loss", "rationale_field", "seed", "eval",
                                           "targets_per_s", "best_epoch", "epochs_run")} for r in recs]
    from slim.recsys.summary import markdown

    md = markdown(res, cfg.protocols)
    atomic.write_json(rep / "results.json", res)
    atomic.write_text(rep / "results.md", md)
    m = Manifest(STAGE, conf, inputs, outputs=["reports/results.md", "reports/results.json", "reports/plots"],
                 counts={"runs": len(recs), "users": len(d.seqs)},
                 timings={"total_s": time.time() - t0, "rank_s": t_rank},
                 extra={"rows_per_s": len(d.seqs) * len(recs) / max(t_rank, 1e-9), "block_users": cfg.block_users,
                        "driver_peak_rss_mb": peak_rss_mb()})
    rd.write_manifest(m)
    Tracker(cfg.tracking, cfg.run_dir).report(rep, {"protocols": ",".join(cfg.protocols), "split": cfg.split})
    log.info("reports/results.md:\n%s", md)  # the stage log has it whole; the console gets the headline
    say(scale_line(STAGE, len(d.seqs) * len(recs), "user rankings (users x runs)", t_rank))
    return m


def headline(run_dir) -> list[str]:
    """The headline of the finished evaluate stage in `run_dir` (slim.recsys.summary.headline)."""
    from slim.recsys.summary import headline as lines

    rd = RunDir(run_dir)
    res = json.loads(rd.path("reports/results.json").read_text())
    return lines(res, str(rd.path("reports/results.md")))


def closing(cfg: EvaluateConfig) -> list[str]:
    """The face's last words after a run (slim.runner.stages.closing): a blank line and the headline."""
    return ["", *headline(cfg.run_dir)]


def teacher_subset(recs: list, rk: dict, uts: dict, protocols) -> dict:
    """slim_teacher is compared with slim and id_text on the users the teacher covered only."""
    key = next((k for k in uts if k[0] == "slim_teacher"), None)
    if key is None:
        return {}
    mask = uts[key].present
    if not mask.any():
        return {"teacher_users": 0}
    sub = subset_recs(recs, rk, mask, protocols)
    return {"teacher_users": int(mask.sum()), "teacher_rows": report.aggregate(sub, protocols),
            "teacher_gains": [g for g in report.gains(per_user(rk, mask), protocols)
                              if "slim" in {report.parse_variant(g["model"])[0], report.parse_variant(g["baseline"])[0]}
                              or g["model"].startswith("slim_teacher")]}


def student_model(rd: RunDir) -> Optional[dict]:
    """Which student wrote the rationales; cross_domain when it was distilled in another run directory."""
    m = rd.read_manifest(C.STUDENT_DIR)
    if m is None or "model" not in m.extra:
        return None
    info = dict(m.extra["model"])
    if info.get("kind") == "base":
        info["cross_domain"] = False
        return info
    # stored relative to the run directory when inside it (older manifests: relative to the stage's working
    # directory, which RunDir.resolve recognises), so the label does not depend on where this job runs
    path, root = str(rd.resolve(info.get("path", "")).resolve()), str(rd.root.resolve()).rstrip("/")
    info["cross_domain"] = not path.startswith(root + "/")
    return info


def write_plots(out: Path, d, rd: RunDir, res: dict, rk: dict, top: dict, cfg: EvaluateConfig) -> list:
    files = []
    for loss, rows in res["rows"].items():
        for p in cfg.protocols:
            f = out / f"ndcg10_{p}_{loss}.png"
            plots.protocol_bars(f, {k: r[p]["NDCG@10"][:2] for k, r in rows.items()}, p, res["chance"][p]["NDCG@10"])
            files.append(f.name)
    pop = np.bincount(np.concatenate(d.inputs("valid")), minlength=d.num_items + 1)  # training interactions per item
    bucket, groups = plots.popularity_buckets(pop), plots.length_groups(np.array([len(s) for s in d.inputs(cfg.split)]))
    tg, full = d.targets(cfg.split), HEADLINE if HEADLINE in cfg.protocols else None
    for loss in res["rows"]:
        keys = [k for (l, k) in rk if l == loss and not k.startswith("text_match")]
        by_bb = defaultdict(list)
        for k in keys:
            by_bb[k.split("-", 1)[0]].append(k)
        if full and by_bb:
            tail = {bb: [("share of top-10 recs (%)", {}), ("Hit@10 (%)", {})] for bb in by_bb}
            sparse = {bb: [("NDCG@10 (%)", {})] for bb in by_bb}
            for bb, ks in by_bb.items():
                for k in ks:
                    lt = plots.long_tail(top[(loss, k)], rk[(loss, k)][full], tg, bucket)
                    tail[bb][0][1][k.split("-", 1)[1]], tail[bb][1][1][k.split("-", 1)[1]] = lt["rec_share"], lt["hit10"]
                    sparse[bb][0][1][k.split("-", 1)[1]] = plots.by_group(report.ndcg10(rk[(loss, k)][full]).mean(0),
                                                                          groups)
            labels = ["most popular"] + [f"group {g + 1}" for g in range(1, plots.BUCKETS - 1)] + ["least popular"]
            plots.per_backbone(out / f"long_tail_{loss}.png", tail, labels, f"Long tail, full ranking, {loss}")
            plots.per_backbone(out / f"sparse_users_{loss}.png", sparse,
                           ["shortest"] + [f"q{g + 1}" for g in range(1, plots.BUCKETS - 1)] + ["longest"],
                           f"Users by history length (quintiles), full ranking NDCG@10, {loss}")
            files += [f"long_tail_{loss}.png", f"sparse_users_{loss}.png"]
        tm_rows = {k: r for k, r in res["rows"][loss].items() if k.startswith("text_match")}
        if tm_rows:
            plots.per_backbone(out / f"text_match_steps_{loss}.png",
                           {"text matching": [("NDCG@10 (%)", {p: [r[p]["NDCG@10"][0] for r in tm_rows.values()]
                                                              for p in cfg.protocols})]},
                           [k[len("text_match ("):-1] for k in tm_rows], f"ID-agnostic text matching per rationale step, {loss}")
            files.append(f"text_match_steps_{loss}.png")
    return files


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these; a member left
# out takes the face's default (own_inputs: {}, every input is an upstream stage's output; resources: none).
CONFIG = EvaluateConfig
WRITES = (STAGE, "reports")


def reads(cfg: EvaluateConfig) -> list[str]:
    return [C.TRAIN_DIR]
