"""Untuned vs tuned (issue 41): the same rows, seeds and data trained once with the shared setting of train and once
after `train.search` gave every row group the same trials, side by side, and whether a conclusion changes.

  PYTHONPATH=. .venv/bin/python bench/bench_tuned.py --preset games --root ~/slim-runs/tuned-games
  PYTHONPATH=. .venv/bin/python bench/bench_tuned.py --preset ml100k --root ~/slim-runs/tuned-ml100k \
      --from ~/slim-runs/refresh-ml100k/refresh

--root holds two run directories, <root>/untuned and <root>/tuned, and the step records (hours of work: every step
resumes, a killed search keeps its finished trials). Presets:
- games: the 5,000-user Games subsample (configs/games_offline.yaml, no LLM stage: item text only), SASRec and
  GRU4Rec x `id` / `id_text` with `concat` and `sum` fusion, CE. Does `sum` still beat `concat` when both are tuned?
- ml100k: all of MovieLens-100K with the student's rationales of another run directory (--from, e.g. the refresh
  benchmark's: its data, teacher, distill, student and encode folders are copied, and stay current: fingerprints
  are by content), SASRec and GRU4Rec x `id`, `id_text` (concat, sum), `history_text`, `slim`, CE. Does
  `history_text` still match `slim` when both are tuned?
Steps: the upstream stages into <root>/untuned (run, or copied from --from); `train,evaluate` there with
`train.search.trials=0`; the upstream folders copied to <root>/tuned; `train,evaluate` there with the search.
The report: test NDCG@10 and Hit@10 under full ranking, mean ± std over seeds, untuned beside tuned with a paired
test per row (users' seed-averaged NDCG@10); each group's chosen hyperparameters; the search's budget and wall
time; each preset's question asked of both tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness, steps  # noqa: E402
from bench.harness import ROOT  # noqa: E402

PRESETS = {
    "games": {
        "config": "configs/games_offline.yaml", "upstream": ("data", "encode"), "prepare": ["encode.sources=[]"],
        "grid": ["train.backbones=[sasrec,gru4rec]", "train.variants=[id,id_text]", "train.text_fusions=[concat,sum]",
                 "train.losses=[ce]", "train.seeds=[0,1,2]", "evaluate.protocols=[uni100,full]"],
        "questions": [("id_text+sum", "id_text", "does `sum` still beat `concat`?")]},
    "ml100k": {
        "config": "configs/ml100k.yaml", "upstream": ("data", "teacher", "distill", "student", "encode"),
        "prepare": [],
        "grid": ["train.backbones=[sasrec,gru4rec]", "train.variants=[id,id_text,history_text,slim]",
                 "train.text_fusions=[concat,sum]", "train.rationale_positions=[after_prefix]", "train.losses=[ce]",
                 "train.seeds=[0,1,2]", "evaluate.protocols=[uni100,full]"],
        "questions": [("history_text", "slim", "does `history_text` still match `slim`?"),
                      ("id_text+sum", "id_text", "does `sum` still beat `concat`?")]},
    # a smoke run of this script (minutes): 150 MovieLens users, no LLM stage
    "tiny": {
        "config": "configs/tiny.yaml", "upstream": ("data", "encode"), "prepare": ["encode.sources=[history]"],
        "grid": ["train.backbones=[gru4rec]", "train.variants=[id,id_text,history_text]",
                 "train.text_fusions=[concat,sum]", "train.losses=[ce]", "train.seeds=[0,1]", "train.epochs=4",
                 "train.search.grace_epochs=1", "evaluate.protocols=[full]"],
        "questions": [("id_text+sum", "id_text", "does `sum` still beat `concat`?")]},
}


def copy_upstream(src: Path, dst: Path, stages: tuple) -> None:
    """The upstream stages' folders of src into dst, those dst lacks (a copy stays current: content fingerprints)."""
    for s in stages:
        if (src / s).exists() and not (dst / s).exists():
            shutil.copytree(src / s, dst / s)


def mean_std(run_dir: Path, protocol: str = "full") -> dict:
    """(loss, row) -> {metric: [mean, std, seeds]} of the evaluate stage's report."""
    res = json.loads((run_dir / "reports" / "results.json").read_text())
    return {(loss, row): v[protocol] for loss, rows in res["rows"].items() for row, v in rows.items()
            if protocol in v}


def _ms(v: list) -> str:
    return f"{v[0]:.2f} ± {v[1]:.2f}"


def report(p: dict, root: Path, untuned: dict, tuned: dict) -> list[str]:
    a, b = mean_std(root / "untuned"), mean_std(root / "tuned")
    s = tuned["manifests"]["train"]["extra"]["search"]
    t_un, t_tu = untuned["manifests"]["train"]["timings"], tuned["manifests"]["train"]["timings"]
    d = tuned["manifests"]["data"]["counts"] if "data" in tuned["manifests"] else {}
    lines = [f"Config `{p['config']}`, {d.get('users', '?'):,} users, {d.get('items', '?'):,} items. Grid: "
             f"{' '.join(p['grid'])}.", "",
             f"**The budget, the same for every group**: {s['trials']} trials drawn once (search seed {s['seed']}) "
             f"over the space {json.dumps(s['space'])}; {s['scheduler']} (grace {s['grace_epochs']} epochs, "
             f"reduction factor {s['reduction_factor']}, at most {s['max_epochs']} epochs), selection on validation "
             f"NDCG@10 under `{s['valid_protocol']}`; then each group's best trial for every seed.", "",
             f"**Wall time** (train stage, this machine): untuned {t_un['total_s']:.0f} s; tuned "
             f"{t_tu['total_s']:.0f} s, of which the search {t_tu.get('search_s', float('nan')):.0f} s (after a kill: "
             f"the part since the resumption).", "",
             "## Test, full ranking: untuned vs tuned (same seeds)", "",
             "| row | untuned NDCG@10 | tuned NDCG@10 | diff % | p (Wilcoxon) | untuned Hit@10 | tuned Hit@10 |",
             "|---|---|---|---:|---:|---|---|"]
    pu = {"untuned": steps.final_metrics(root / "untuned"), "tuned": steps.final_metrics(root / "tuned")}
    for g in steps.compare(pu["tuned"], pu["untuned"]):
        k = (g["key"][0], "-".join(g["key"][1:]))
        lines.append(f"| {g['row']} | {_ms(a[k]['NDCG@10'])} | {_ms(b[k]['NDCG@10'])} | {g['gain_pct']:+.1f} | "
                     f"{g['p_wilcoxon']:.2g} | {_ms(a[k]['Hit@10'])} | {_ms(b[k]['Hit@10'])} |")
    c = untuned["manifests"]["train"]["config"]
    dropout = ", ".join(f"{b} {c[b]['dropout']:g}" for b in c["backbones"] if "dropout" in c.get(b, {}))
    lines += ["", "## The chosen hyperparameters per group", "",
              f"The untuned runs' shared setting: lr {c['lr']:g}, hidden {c['hidden']}, weight_decay "
              f"{c['weight_decay']:g}, dropout {dropout or 'none'}.", "",
              "| group | valid NDCG@10 | trained epochs (all trials) | chosen |", "|---|---:|---:|---|"]
    for grp, c in sorted(s["groups"].items()):
        hp = ", ".join(f"{k} {v:g}" for k, v in c["hp"].items())
        lines.append(f"| {grp} | {c['score']:.2f} | {c['trained_epochs']} | {hp} |")
    lines += ["", "## Does a conclusion change?", ""] + questions(p, pu)
    return lines


def questions(p: dict, pu: dict) -> list[str]:
    """Each preset question (row a against row b, per backbone and loss) in both tables."""
    lines = ["| question | backbone (loss) | untuned: a vs b, diff %, p | tuned: a vs b, diff %, p | same answer |",
             "|---|---|---|---|---|"]
    for va, vb, q in p["questions"]:
        for loss, bb, _ in sorted(k for k in pu["tuned"] if k[2] == va):
            a, b = (loss, bb, va), (loss, bb, vb)
            if not all(a in pu[t] and b in pu[t] for t in ("untuned", "tuned")):
                continue
            said = [steps.compare({a: pu[t][a]}, {a: pu[t][b]})[0] for t in ("untuned", "tuned")]
            cell = [f"{g['a']:.2f} vs {g['b']:.2f}, {g['gain_pct']:+.1f}%, p {g['p_wilcoxon']:.2g}" for g in said]
            verdict = [(g["gain_pct"] > 0, g["p_wilcoxon"] < 0.05) for g in said]
            lines.append(f"| {q} | {bb} ({loss}) | {cell[0]} | {cell[1]} | "
                         f"{'yes' if verdict[0] == verdict[1] else '**no**'} |")
    return lines + ["", "Same answer: the same sign of the difference and the same side of p = 0.05."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--root", required=True, help="outside the work tree; it resumes")
    ap.add_argument("--from", dest="src", help="a run directory whose upstream stages are copied (ml100k)")
    ap.add_argument("--trials", type=int, default=12, help="train.search.trials: per group, the same for all")
    ap.add_argument("--out", help="default bench/results/tuned_<preset>.md")
    a = ap.parse_args()
    p, root, machine = PRESETS[a.preset], Path(a.root).expanduser(), harness.Machine()
    un, tu = root / "untuned", root / "tuned"
    un.mkdir(parents=True, exist_ok=True)
    if a.src:
        copy_upstream(Path(a.src).expanduser(), un, p["upstream"])
    elif not all((un / s).exists() for s in p["upstream"]):
        steps.step(root, "prepare", p["config"], un, ",".join(p["upstream"]), [*p["grid"], *p["prepare"]])
    extra = [*p["grid"], *p["prepare"]]
    untuned = steps.step(root, "untuned", p["config"], un, "train,evaluate", [*extra, "train.search.trials=0"])
    copy_upstream(un, tu, p["upstream"])
    tuned = steps.step(root, "tuned", p["config"], tu, "train,evaluate", [*extra, f"train.search.trials={a.trials}"])
    args = f"--preset {a.preset} --root {steps.home(root)}" + (f" --from {steps.home(Path(a.src).expanduser())}"
                                                              if a.src else "") + f" --trials {a.trials}"
    harness.write_results(a.out or ROOT / "bench" / "results" / f"tuned_{a.preset}.md",
                          f"Untuned vs tuned ({a.preset}): the same rows and seeds, every group searched alike",
                          report(p, root, untuned, tuned), harness.command(args), machine)


if __name__ == "__main__":
    main()
