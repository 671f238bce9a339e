"""Distillation: training tokens/s per strategy (DDP vs DeepSpeed ZeRO-2, 2 Ray Train workers), validation loss
before and after, and a few student rationales beside the teacher's for the same held-out users.

    PYTHONPATH=. .venv/bin/python bench/bench_distill.py [--users 120] [--steps 10] [--gpu]

Teacher rationales: the run dir's teacher/rationales if --run-dir has them, else the templated three-step rationales
of slim/testing/teacher_mock.py over ml-100k users (a named mock of the teacher: no teacher LLM output is used).
Ratios are against the DDP run of the same session. --gpu runs DeepSpeed with bf16/nccl on every visible GPU.
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
from slim.distill import stage as distill_stage  # noqa: E402


def prepare_run_dir(a, tmp: Path) -> tuple[Path, str]:
    if a.run_dir and (Path(a.run_dir) / C.TEACHER_SHARDS).exists():
        return Path(a.run_dir), f"teacher output in {a.run_dir}"
    from slim.data import DataConfig
    from slim.data import stage as prepare
    from slim.testing.teacher_mock import write_teacher_shards

    rd = tmp / "run"
    prepare.run(DataConfig(run_dir=str(rd), source="ml-100k", min_user_interactions=5, min_item_interactions=5,
                           max_users=a.users))
    write_teacher_shards(rd)  # 5 categories x 5 products, as the paper's teacher prompt asks
    return rd, f"templated mock rationales (slim/testing/teacher_mock.py) for {a.users} ml-100k users"


def train(rd: Path, strategy: str, a, gpu: bool) -> dict:
    n = a.workers
    if gpu:
        import torch

        n = torch.cuda.device_count()
    cfg = distill_stage.DistillConfig(run_dir=str(rd), strategy=strategy, num_workers=n, use_gpu=gpu,
                                      max_seq_len=a.max_seq_len, batch_size=a.batch_size, lr=1e-3,
                                      max_steps=a.steps, val_fraction=0.15, max_val_examples=16,
                                      checkpoint_every=10**6, seed=2024)
    with harness.timed() as t:
        distill_stage.run(cfg, force=True)
    m = json.loads((rd / distill_stage.TRAIN_METRICS).read_text())
    m["wall_s"] = t.s
    shutil.copytree(rd / C.STUDENT_ADAPTER, rd / f"adapter-{strategy}{'-gpu' if gpu else ''}", dirs_exist_ok=True)
    return m


def generate(rd: Path, adapter: Path, users: list[int], max_new: int) -> dict[int, str]:
    """Greedy HF generate with the adapter on the exact prompt distillation trained on."""
    import pyarrow.parquet as pq
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slim.runtime.llm_models import resolve
    from slim.text.prompts import PromptConfig, student_chat_text

    base = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    model.eval()
    u = pq.read_table(rd / C.USERS_FILE).to_pandas().set_index(C.USER_ID)
    items = pq.read_table(rd / C.ITEMS_FILE).to_pandas()
    text = dict(zip(items[C.ITEM_ID], items[C.TEXT]))
    out = {}
    for uid in users:
        prompt = student_chat_text(tok, u.loc[uid, C.ITEM_IDS], text, PromptConfig())
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False)
        out[uid] = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def report(runs: dict, src: str, samples: list) -> list[str]:
    base = next(iter(runs.values()))["tokens_per_s"]  # DDP on CPU; the only run with --gpu
    lines = [f"Teacher rationales: {src}. Base model SmolLM2-135M-Instruct (LoRA r=16 on q/k/v/o), "
             f"{next(iter(runs.values()))['num_workers']} Ray Train workers; CPU: gloo, fp32, DeepSpeed ZeRO-2 with torch "
             "AdamW; GPU (--gpu): nccl, bf16.",
             "Where the cores are shared with other jobs, absolute figures are noisy; the ratio is from the same "
             "session.", "",
             "| strategy | workers | steps | tokens | train s | tokens/s | x DDP | val loss before | val loss after | "
             "train loss first -> last |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in runs.items():
        tr = m["train"]
        lines.append(f"| {name} | {m['num_workers']} | {m['steps']} | {m['tokens']} | {m['train_seconds']:.1f} | "
                     f"{m['tokens_per_s']:.0f} | {m['tokens_per_s'] / base:.2f} | {m['val_loss_before']:.3f} | "
                     f"{m['val_loss_after']:.3f} | {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f} |")
    ex = next(iter(runs.values()))["examples"]
    lines += ["", f"Examples: {ex['train_examples']} train / {ex['val_examples']} held-out, mean {ex['mean_tokens']:.0f}"
              f" tokens; {ex['history_truncated']} histories shortened to fit, {ex['dropped_too_long']} dropped "
              f"as too long, {ex['unparsable']} unparsable, {ex['empty']} empty, {ex['not_ok_status']} not ok.", "",
              "## Student (after distillation) beside the teacher, held-out users", ""]
    for uid, teacher, student in samples:
        lines += [f"### user {uid}", "", "Teacher:", "", "```", teacher.strip(), "```", "", "Student:", "", "```",
                  student.strip(), "```", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", default="")
    p.add_argument("--users", type=int, default=120)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--out", default="bench/results/distill.md")
    a = p.parse_args()
    machine = harness.Machine()
    harness.ray()
    with harness.scratch() as tmp:
        rd, src = prepare_run_dir(a, tmp)
        strategies = ["deepspeed"] if a.gpu else ["ddp", "deepspeed"]
        runs = {s: train(rd, s, a, a.gpu) for s in strategies}
        for s, m in runs.items():
            print(json.dumps({"strategy": s, "tokens_per_s": m["tokens_per_s"], "val_before": m["val_loss_before"],
                              "val_after": m["val_loss_after"], "wall_s": m["wall_s"]}), flush=True)
        last = strategies[-1]
        val_users = runs[last]["examples"]["val_users"][: a.samples]
        from slim.distill.examples import BuildReport, read_teacher, target_text

        teacher = read_teacher(rd / C.TEACHER_SHARDS, BuildReport())
        teacher = dict(zip(teacher[C.USER_ID], teacher[C.RATIONALE]))
        student = generate(rd, rd / f"adapter-{last}{'-gpu' if a.gpu else ''}", val_users, a.max_new_tokens)
        samples = [(u, target_text(teacher[u]) or teacher[u], student[u]) for u in val_users]
    harness.write_results(a.out, "Distillation benchmark", report(runs, src, samples), harness.command(), machine)
    Path(a.out).with_suffix(".json").write_text(json.dumps(
        {s: {k: v for k, v in m.items() if k not in ("train", "val")} for s, m in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
