"""Time and cost per stage of configs/games_gpu.yaml on all of Amazon Games, projected from this project's own
measured rates (tokens per user from a finished run's manifests) and published figures for the hardware, written
to bench/results/games_gpu_projection.md. Nothing here runs a GPU: every projected figure says what it rests on.

  PYTHONPATH=. .venv/bin/python bench/project_gpu.py --run-dir runs/ml100k

Published figures used (third-party, cited in the output): vLLM output throughput of a 7B-class model on one A100
80GB (3,363 tokens/s, DeepSeek-R1-Distill-Qwen-7B, default config, as collected on morphllm.com/vllm-benchmarks
from third-party runs, 2026); A100 bf16 dense peak 312 TFLOP/s (NVIDIA's A100 datasheet). Assumptions, stated in the
output and set by flags: the share of that peak LoRA training reaches (MFU), the price of a GPU-hour.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from slim.io import columns as C  # noqa: E402

GAMES_USERS = 50_597  # all users of the Amazon 2018 Video Games export (data stage, 5-core)
VLLM_7B_A100_TOK_S = 3363.0
A100_BF16_FLOPS = 312e12
PARAMS_7B = 7.6e9  # Qwen2.5-7B-Instruct


def manifest(run: Path, folder: str) -> dict:
    p = run / folder / "manifest.json"
    if not p.exists():
        raise SystemExit(f"{p} not found: the projection needs a finished run of every LLM stage")
    return json.loads(p.read_text())


def measured(run: Path) -> dict:
    """Tokens per user of the teacher (in, out) and the student (out)."""
    t = manifest(run, "teacher")["extra"]["billed"]
    s = manifest(run, C.STUDENT_DIR)["counts"]
    return {"teacher_in": t["tokens_in"] / t["requests"], "teacher_out": t["tokens_out"] / t["requests"],
            "student_out": s["new_tokens_out"] / max(harness.rows_generated(s), 1), "student_parse": s["ok"] / max(s["users"], 1)}


def project(m: dict, cfg: dict, mfu: float, gpu_hour: float) -> list[tuple]:
    """-> rows (stage, hardware, hours, usd, what it rests on)."""
    te, di, st = cfg["teacher"], cfg["distill"], cfg["student"]
    users_t = te["num_users"]
    tin, tout = users_t * m["teacher_in"], users_t * m["teacher_out"]
    usd_t = (tin * te["price_in_per_mtok"] + tout * te["price_out_per_mtok"]) / 1e6
    minutes_t = max(users_t / te["requests_per_min"], (tin + tout) / te["tokens_per_min"])
    rows = [("teacher", f"{te['model']} API", minutes_t / 60, usd_t,
             f"{users_t:,} users x {m['teacher_in']:.0f} in / {m['teacher_out']:.0f} out tokens (measured per user), "
             f"list prices, the config's rate limits")]
    tok_ex = m["teacher_in"] + m["teacher_out"]  # a distillation example: a prompt and the teacher's answer
    train_tokens = users_t * di["epochs"] * tok_ex
    gpus_d = di["num_workers"]
    hours_d = 6 * PARAMS_7B * train_tokens / (A100_BF16_FLOPS * mfu * gpus_d) / 3600
    rows.append(("distill", f"{gpus_d} x A100 80GB", hours_d, hours_d * gpus_d * gpu_hour,
                 f"6 x {PARAMS_7B / 1e9:.1f}B params x {train_tokens / 1e6:.1f}M tokens ({users_t:,} examples x "
                 f"{di['epochs']} epochs x {tok_ex:.0f} tokens), {mfu:.0%} of the bf16 peak (an upper bound for LoRA)"))
    gpus_s = st["num_engines"]
    out_tokens = GAMES_USERS * m["student_out"]
    hours_s = out_tokens / (VLLM_7B_A100_TOK_S * gpus_s) / 3600
    rows.append(("student", f"{gpus_s} x A100 80GB (one vLLM engine each)", hours_s, hours_s * gpus_s * gpu_hour,
                 f"{GAMES_USERS:,} users x {m['student_out']:.0f} output tokens (measured per user) at "
                 f"{VLLM_7B_A100_TOK_S:,.0f} tok/s per GPU (published, 7B class)"))
    return rows


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--run-dir", required=True, help="a finished offline run whose manifests give tokens per user")
    a.add_argument("--config", default=str(ROOT / "configs" / "games_gpu.yaml"))
    a.add_argument("--mfu", type=float, default=0.4, help="assumed share of the bf16 peak in LoRA training")
    a.add_argument("--gpu-hour-usd", type=float, default=2.0, help="assumed price of one A100-80GB hour")
    args = a.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    m = measured(Path(args.run_dir))
    rows = project(m, cfg, args.mfu, args.gpu_hour_usd)
    md = [f"Written by: `PYTHONPATH=. .venv/bin/python bench/project_gpu.py --run-dir {args.run_dir}` "
          f"(config {Path(args.config).name}; MFU {args.mfu:.0%}, ${args.gpu_hour_usd:.2f} per GPU-hour: "
          "assumptions, change them with --mfu and --gpu-hour-usd).", "",
          f"Measured in `{args.run_dir}` (SmolLM2-135M teacher and student on this machine's CPUs): teacher "
          f"{m['teacher_in']:.0f} prompt + {m['teacher_out']:.0f} answer tokens per user, student "
          f"{m['student_out']:.0f} answer tokens per user (parse rate {m['student_parse']:.1%}). A 7B student writes "
          "answers of similar length under the same schema and max_tokens; a real teacher may write longer ones "
          "(up to teacher.max_tokens).", "",
          "| stage | hardware | hours | USD | rests on |", "|---|---|---:|---:|---|"]
    md += [f"| {s} | {hw} | {h:.2f} | {usd:,.2f} | {why} |" for s, hw, h, usd, why in rows]
    total_h, total_usd = sum(r[2] for r in rows), sum(r[3] for r in rows)
    md += [f"| LLM stages | | {total_h:.2f} | {total_usd:,.2f} | |", "",
           "Not projected (no GPU was measured here): the encode stage (MiniLM; on 2 CPU cores the encode manifest's "
           "users_per_s applies) and recommender training on GPUs (train.use_gpu; the CPU rates are in the train "
           "manifest's targets_per_s).", "",
           "Sources: vLLM 7B-class throughput on one A100 80GB: https://www.morphllm.com/vllm-benchmarks "
           "(DeepSeek-R1-Distill-Qwen-7B, 3,363 output tok/s, default config); the LambdaLabsML/vllm-benchmark report "
           "finds H100 about 2x A100 (halve the student hours on H100s). A100 bf16 peak: NVIDIA A100 datasheet "
           "(312 TFLOP/s dense). Teacher prices: the config's price_in/out_per_mtok (gpt-4o-mini list prices)."]
    # "Written by", not "Command": nothing is measured here, and bench/run_all.py reruns only the measuring benches;
    # no machine line either, for the same reason
    harness.write_results(ROOT / "bench" / "results" / "games_gpu_projection.md",
                          "Paper-scale SLIM on all of Amazon Games: projected time and cost per stage", md)


if __name__ == "__main__":
    main()
