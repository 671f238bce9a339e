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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from slim.io import columns as C  # noqa: E402

STAGES = C.STAGE_DIRS  # each stage's manifest is in the folder of its name
PLOTS = ("long_tail_{}.png", "sparse_users_{}.png", "text_match_steps_{}.png", "ndcg10_full_{}.png")


def stage_rows(run: Path) -> tuple[list[str], float]:
    lines, total = ["| stage | wall s | counts |", "|---|---:|---|"], 0.0
    for name in STAGES:
        p = run / name / "manifest.json"
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        t = float(m["timings"].get("total_s", 0.0))
        total += t
        counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in list(m["counts"].items())[:6])
        lines.append(f"| {name} | {t:,.1f} | {counts} |")
    return lines + [f"| total | {total:,.1f} | |"], total


def quality_lines(run: Path) -> list[str]:
    from slim.text.quality import describe

    out = []
    for folder, key in ((C.TEACHER_DIR, None), (C.ENCODE_DIR, "student"), (C.ENCODE_DIR, "teacher")):
        p = run / folder / "manifest.json"
        q = json.loads(p.read_text())["extra"].get("quality") if p.exists() else None
        q = (q or {}).get(key) if key else q
        if q:
            out.append(f"- {key or 'teacher'} rationales ({folder} stage): {describe(q)}")
    return out


def parse_rate(run: Path) -> list[str]:
    """The student's parse rate (all three steps), from its stage's manifest counts."""
    p = run / C.STUDENT_DIR / "manifest.json"
    if not p.exists():
        return []
    c = json.loads(p.read_text())["counts"]
    ok, users = int(c.get("ok", 0)), int(c.get("users", 0))
    return [f"- student parse rate (three steps found): {ok:,} of {users:,} users = {100 * ok / max(users, 1):.1f}%"]


def holm(ps: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, run = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = run
    return out


def verdicts(res: dict, protocol: str = "full") -> list[str]:
    """Plain words per backbone and loss: SLIM (each position mode) against id_text and against the no-LLM control
    history_text, on the headline protocol, with Holm-adjusted Wilcoxon p-values over every comparison stated."""
    want = [g for g in res["gains"] if g["protocol"] == protocol and g["model"].split("+")[0] in ("slim", "slim@all")
            and g["baseline"].split("@")[0] in ("id_text", "history_text")]
    if not want:
        return []
    adj = holm([g["p_wilcoxon"] for g in want])
    lines = [f"## Verdict ({protocol} NDCG@10; Holm-adjusted Wilcoxon p over the {len(want)} comparisons below)", ""]
    for g, p in sorted(zip(want, adj), key=lambda x: (x[0]["backbone"], x[0]["loss"], x[0]["model"], x[0]["baseline"])):
        if p < 0.05:
            word = "SLIM is better" if g["gain_pct"] > 0 else "SLIM is worse"
        else:
            word = "no significant difference"
        lines.append(f"- {g['backbone']} {g['loss']}: {g['model']} vs {g['baseline']}: {g['mean_a']:.2f} vs "
                     f"{g['mean_b']:.2f} ({g['gain_pct']:+.1f}%, p={p:.2g}): {word}.")
    return lines + [""]


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--run-dir", required=True)
    a.add_argument("--name", required=True)
    a.add_argument("--command", required=True, help="the command that produced the run, recorded as is")
    a.add_argument("--commit", default="", help="the commit the run was made at")
    args = a.parse_args()
    run, out = Path(args.run_dir), Path(__file__).parent / "results"
    rows, total = stage_rows(run)
    # "Run made by", not "Command": bench/run_all.py reruns the "Command:" line of every results file, and this
    # is a pipeline run (an hour or more), not a benchmark
    md = [f"Run made by: `{args.command}`"
          + (f" at commit {args.commit}" if args.commit else ""), "",
          f"Report written by: `PYTHONPATH=. .venv/bin/python bench/report_run.py --run-dir {args.run_dir} "
          f"--name {args.name} --command \"...\"` (figures copied from the run's manifests and report).", "",
          "## Wall time per stage (each stage's manifest)", ""] + rows + [""]
    q = parse_rate(run) + quality_lines(run)
    md += (["## Rationale quality", ""] + q + [""]) if q else []
    report = (run / "reports" / "results.md").read_text().replace("](plots/", f"]({args.name}_")
    md += ["## The evaluate stage's report", "", report.replace("\n# ", "\n### ").lstrip("# ")]
    res = json.loads((run / "reports" / "results.json").read_text())
    md[md.index("## The evaluate stage's report"):md.index("## The evaluate stage's report")] = verdicts(res)
    losses = res["rows"]
    for loss in losses:
        for tmpl in PLOTS:
            src = run / "reports" / "plots" / tmpl.format(loss)
            if src.exists():
                shutil.copyfile(src, out / f"{args.name}_{src.name}")
    harness.write_results(out / f"{args.name}.md", f"{args.name}: a whole pipeline run", md, echo=False)
    print(f"wrote {out / (args.name + '.md')} (stages {total:,.0f} s)")


if __name__ == "__main__":
    main()
