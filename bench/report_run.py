"""A finished pipeline run -> bench/results/<name>.md: the command that made it, each stage's wall time from its
own manifest, the quality of the rationales, and the evaluate stage's report (reports/results.md) with its plots.

  PYTHONPATH=. .venv/bin/python bench/report_run.py --run-dir runs/games_offline --name slim_games \\
      --command ".venv/bin/python jobs/pipeline.py --config configs/games_offline.yaml"

Nothing here is measured anew: every figure is one the stages wrote into their manifests and reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

STAGES = [("data", "data"), ("teacher", "teacher"), ("distill", "student"), ("student", "rationales"),
          ("encode", "embeddings"), ("train", "train"), ("evaluate", "evaluate")]
PLOTS = ("long_tail_{}.png", "sparse_users_{}.png", "text_match_steps_{}.png", "ndcg10_full_{}.png")


def stage_rows(run: Path) -> tuple[list[str], float]:
    lines, total = ["| stage | wall s | counts |", "|---|---:|---|"], 0.0
    for name, folder in STAGES:
        p = run / folder / "manifest.json"
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        t = float(m["timings"].get("total_s", 0.0))
        total += t
        counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in list(m["counts"].items())[:6])
        lines.append(f"| {name} | {t:,.1f} | {counts} |")
    return lines + [f"| total | {total:,.1f} | |"], total


def quality_lines(run: Path) -> list[str]:
    from slim.quality import describe

    out = []
    for folder, key in (("teacher", None), ("embeddings", "student"), ("embeddings", "teacher")):
        p = run / folder / "manifest.json"
        q = json.loads(p.read_text())["extra"].get("quality") if p.exists() else None
        q = (q or {}).get(key) if key else q
        if q:
            out.append(f"- {key or 'teacher'} rationales ({folder} stage): {describe(q)}")
    return out


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--run-dir", required=True)
    a.add_argument("--name", required=True)
    a.add_argument("--command", required=True, help="the command that produced the run, recorded as is")
    args = a.parse_args()
    run, out = Path(args.run_dir), Path(__file__).parent / "results"
    rows, total = stage_rows(run)
    # "Run made by", not "Command": bench/run_all.py reruns the "Command:" line of every results file, and this
    # is a pipeline run (an hour or more), not a benchmark
    md = [f"# {args.name}: a whole pipeline run", "", f"Run made by: `{args.command}`", "",
          f"Report written by: `PYTHONPATH=. .venv/bin/python bench/report_run.py --run-dir {args.run_dir} "
          f"--name {args.name} --command \"...\"` (figures copied from the run's manifests and report).", "",
          "## Wall time per stage (each stage's manifest)", ""] + rows + [""]
    q = quality_lines(run)
    md += (["## Rationale quality", ""] + q + [""]) if q else []
    report = (run / "reports" / "results.md").read_text().replace("](plots/", f"]({args.name}_")
    md += ["## The evaluate stage's report", "", report.replace("\n# ", "\n### ").lstrip("# ")]
    losses = json.loads((run / "reports" / "results.json").read_text())["rows"]
    for loss in losses:
        for tmpl in PLOTS:
            src = run / "reports" / "plots" / tmpl.format(loss)
            if src.exists():
                shutil.copyfile(src, out / f"{args.name}_{src.name}")
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / (args.name + '.md')} (stages {total:,.0f} s)")


if __name__ == "__main__":
    main()
