"""What the schema and the repetition penalty buy: rationale quality and usefulness, teacher and student.

For each dataset and option, one pipeline run (configs/tiny.yaml's demo models: SmolLM2-135M-Instruct as teacher
and student, all-MiniLM-L6-v2) from data to evaluate, training only the ID-agnostic text matching per rationale
field. Options: free text or slim.text.rationale.SCHEMA (teacher response_format, distillation target, student guided
decoding), each with repetition_penalty 1.0 or 1.1 (teacher and student). Measured, per role and option:
parse rate, empty steps, distinct-2, looping share, grounded-product rate (the stages' own manifests), zero-shot
text matching (cosine of the rationale vector against every item vector, full ranking, history excluded: teacher
and student alike), the trained text_match full NDCG@10 (student; from the evaluate report), and seconds per user.

  PYTHONPATH=. .venv/bin/python bench/bench_rationales.py --users 300 --teacher-users 48

Each run directory is resumable: rerunning the same command trains nothing that is already done, and the table is
rewritten from every run that finished (figures from manifests written when the stage ran).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from slim.io import columns as C  # noqa: E402

OPTIONS = {"free": (False, 1.0), "free+rep": (False, 1.1), "schema": (True, 1.0), "schema+rep": (True, 1.1)}
FIELDS = {"whole": "rationale", "step1": "step1", "step2": "step2", "step3": "step3"}


def datasets(shared: Path) -> dict:
    return {"ml-100k": ["data.source=ml-100k"],
            "games": ["data.source=jsonl-sequences", f"data.path={shared / 'data/amazon2018-games'}",
                      "data.min_user_interactions=0", "data.min_item_interactions=0"]}


def overrides(a, structured: bool, penalty: float) -> list[str]:
    s = str(structured).lower()
    return [f"data.max_users={a.users}", f"teacher.num_users={a.teacher_users}", f"teacher.structured={s}",
            f"teacher.extra_body={{repetition_penalty: {penalty}}}", f"distill.structured={s}",
            f"student.sampling={{temperature: 0.0, max_tokens: 384, structured: {s}, repetition_penalty: {penalty}}}",
            "teacher.request_timeout_s=900",  # a shared 2-core machine: a slow answer is not a failed one
            "train.variants=[text_match]", "train.losses=[ce]", "train.seeds=[0]", "evaluate.protocols=[full]"]


def run_pipeline(run: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml",
           "--stages", "data,teacher,distill,student,encode,train,evaluate", "--retry-failed", "teacher,student",
           f"run_dir={run}", *extra]
    with open(run.parent / f"{run.name}.log", "a") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True, env=harness.subprocess_env())


def manifest(run: Path, folder: str) -> dict:
    p = run / folder / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def zero_shot(run: Path, prefix: str) -> dict:
    """Full-ranking NDCG@10 of cosine(rationale vector, item vector) per field, history excluded, over the users
    the source wrote for (an empty or missing rationale ranks its target last)."""
    import pyarrow.parquet as pq

    from slim.recsys import metrics

    users = pq.read_table(run / "data/users.parquet", columns=["user_id", "item_ids"]).to_pydict()
    seqs = dict(zip(users["user_id"], users["item_ids"]))
    items = np.load(run / C.ITEM_EMB_FILE).astype(np.float32)  # [N+1, D]
    items /= np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-9)
    out = {}
    for name, field in FIELDS.items():
        t = pq.read_table(run / C.ENCODE_DIR / f"{prefix}users_{field}.parquet").to_pydict()
        vecs = np.asarray(t["embedding"], dtype=np.float32)  # [U, D]
        hist = [seqs[u] for u in t["user_id"]]
        ranks = metrics.full_rank(vecs @ items.T, np.array([h[-1] for h in hist]), [h[:-1] for h in hist])
        out[name] = metrics.metrics_from_ranks(ranks)["NDCG@10"]
        out["n"], out["chance"] = len(hist), metrics.chance_mean(
            metrics.full_sizes(len(items) - 1, [h[:-1] for h in hist], np.array([h[-1] for h in hist])))["NDCG@10"]
    return out


def collect(run: Path) -> dict:
    t, st, emb = manifest(run, C.TEACHER_DIR), manifest(run, C.STUDENT_DIR), manifest(run, C.ENCODE_DIR)
    q = emb["extra"]["quality"]
    res = json.loads((run / "reports/results.json").read_text())
    trained = {f: res["rows"]["ce"][f"text_match ({f})"]["full"]["NDCG@10"][0] for f in FIELDS}
    stages = C.STAGE_DIRS
    return {"wall_s": sum(manifest(run, f).get("timings", {}).get("total_s", 0.0) for f in stages),
            "teacher": {**q["teacher"], "s_per_user": t["timings"]["generate_s"] / max(t["extra"]["this_run"]["rows"], 1),
                        "zero_shot": zero_shot(run, "teacher_")},
            "student": {**q["student"], "s_per_user": st["timings"]["total_s"] / max(harness.rows_generated(st["counts"]), 1),
                        "zero_shot": zero_shot(run, ""), "trained": trained},
            "distill_s": manifest(run, C.DISTILL_DIR)["timings"]["total_s"],
            "chance_full": res["chance"]["full"]["NDCG@10"]}


def table(ds: str, rows: dict) -> list[str]:
    out = [f"## {ds}", "", "| role | option | users | parse % | empty s1/s2/s3 % | distinct-2 | looping % | products/row "
           "| grounded % | zero-shot NDCG@10 whole / step3 | trained text_match NDCG@10 whole / s1 / s2 / s3 "
           "| s/user | s/user vs free |", "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for role in ("teacher", "student"):
        base = rows.get("free", {}).get(role, {}).get("s_per_user")
        for opt, r in rows.items():
            q, z = r[role], r[role]["zero_shot"]
            tr = " / ".join(f"{q['trained'][f]:.2f}" for f in FIELDS) if "trained" in q else "-"
            ratio = f"{q['s_per_user'] / base:.2f}" if base else "-"
            out.append(f"| {role} | {opt} | {q['n']} | {q['parse_rate']:.1f} | {q['step1_empty']:.0f} / "
                       f"{q['step2_empty']:.0f} / {q['step3_empty']:.0f} | {q['distinct2']:.2f} | {q['looping_rate']:.1f} "
                       f"| {q['products_per_row']:.1f} | {q.get('grounded_rate', 0.0):.1f} | {z['whole']:.2f} / "
                       f"{z['step3']:.2f} | {tr} | {q['s_per_user']:.2f} | {ratio} |")
    any_r = next(iter(rows.values()))
    out += ["", f"Chance level, full ranking NDCG@10 (history excluded): {any_r['chance_full']:.2f} over all test users "
            f"(teacher users: {any_r['teacher']['zero_shot']['chance']:.2f}). Distillation (one-off) took "
            + ", ".join(f"{o} {r['distill_s']:.0f} s" for o, r in rows.items()) + ".", ""]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--teacher-users", type=int, default=48)
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "games"])
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--work", default="runs/bench_rationales")
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--out", default="bench/results/rationales.md")
    p.add_argument("--report-only", action="store_true", help="no runs: the table from every finished run dir")
    a = p.parse_args()
    work, machine = (ROOT / a.work).resolve(), harness.Machine()
    work.mkdir(parents=True, exist_ok=True)
    lines, wall = [], {}
    for ds in a.datasets:
        rows = {}
        for opt in a.options:
            run = work / f"{ds}-{opt.replace('+', '_')}"
            if not a.report_only:
                print(f"[{ds} {opt}] {run}", flush=True)
                run_pipeline(run, datasets(Path(a.shared))[ds] + overrides(a, *OPTIONS[opt]))
            if (run / "reports/results.json").exists():
                rows[opt] = collect(run)
                wall[(ds, opt)] = rows[opt]["wall_s"]
        lines += table(ds, rows) if rows else []
    write(a, lines, wall, machine)


def write(a, lines: list[str], wall: dict, machine: harness.Machine) -> None:
    head = [("This table was read from finished runs (--report-only): the machine line above is the report's, the "
             "load the runs ran under was not recorded. " if a.report_only else "")
            + "Seconds per user are wall time. Models: SmolLM2-135M-"
            f"Instruct (teacher, and the distilled student), all-MiniLM-L6-v2. {a.users} users per dataset "
            f"(fixed-seed subsample), the teacher writes for {a.teacher_users} of them. Options: `schema` = "
            "slim.text.rationale.SCHEMA through the teacher's response_format, the distillation target and the student's "
            "guided decoding; `rep` = repetition_penalty 1.1 for teacher and student (else 1.0). Grounded = step-3 "
            "products matched to a catalogue item (encode.ground_threshold), history items counted as misses. "
            "Zero-shot = cosine of rationale and item vectors, no training; trained = the text_match variant "
            "(CE, seed 0), student rationales, all users.", "",
            "Pipeline time per run (s, the stages' own timings from their manifests): "
            + ", ".join(f"{d} {o} {w:.0f}" for (d, o), w in wall.items()), ""]
    harness.write_results(a.out, "Rationale quality: schema and repetition control, teacher and student", head + lines,
                          harness.command(), machine)


if __name__ == "__main__":
    main()
