"""The `distill` stage: LoRA fine-tuning of a small causal LM on teacher rationales, in Ray Train.

Driver side: build the examples (examples.py), check the cluster can hold the workers, run a TorchTrainer whose
workers run trainloop.train_loop with a DDP or DeepSpeed strategy, then copy the adapter from the final
checkpoint to <run_dir>/distill/adapter (optionally merged into distill/merged) and write the manifest.
Resumable: checkpoints live under distill/ray_train/<config key>; the same command after a kill continues from
the last one (Ray Train restores its checkpoint manager from that folder). A changed config trains afresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from slim.io import atomic
from slim.io import storage
from slim.io import columns as C
from slim.text.prompts import PromptConfig
from slim.io.rundir import Manifest, RunDir
from slim.runtime.console import say
from slim.runtime.signals import off_main_thread

log = logging.getLogger(__name__)

STAGE = C.DISTILL_DIR  # distill/manifest.json
TRAIN_METRICS = f"{STAGE}/train_metrics.json"
EXAMPLES_DIR = f"{STAGE}/examples"
RAY_DIR = f"{STAGE}/ray_train"


class DistillError(RuntimeError):
    """The stage cannot run as configured; the message names the config key."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # the layers LoRA adapts


@dataclass(frozen=True)
class DeepSpeedSettings:
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage
    offload_optimizer: bool = False  # optimizer state in CPU memory (torch AdamW, no DeepSpeedCPUAdam)
    offload_param: bool = False  # ZeRO-3 only


@dataclass(frozen=True)
class DistillConfig:
    run_dir: str = "runs/default"
    base_model: str = "smollm2-135m-instruct"  # Hugging Face id, local path, or the packaged SmolLM2
    cache_dir: str = "~/.cache/slim"  # where base_model is found or converted
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    strategy: Literal["ddp", "deepspeed"] = "ddp"  # Ray Train: DDP, or DeepSpeed ZeRO (distill.deepspeed)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    num_workers: int = 2  # Ray Train workers
    use_gpu: bool = False  # one GPU per worker, nccl, bf16
    cpus_per_worker: float = 0.5  # fractional: whole-CPU workers starve Ray on 2 cores
    torch_threads: int = 1  # per worker
    max_seq_len: int = 1024  # prompt + rationale tokens; longer examples are cut
    max_examples: int = 0  # 0 = every usable teacher rationale
    keep_unstructured: bool = False  # keep answers without the three steps (a toy teacher's); counted in the report
    structured: bool = False  # targets as JSON (slim.text.rationale.SCHEMA): set with student.sampling.structured
    val_fraction: float = 0.1  # of the examples, held out for validation loss
    max_val_examples: int = 64  # at most this many validation examples
    batch_size: int = 4  # micro-batch per worker
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # AdamW learning rate of the LoRA weights
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    max_grad_norm: float = 1.0  # gradient clipping
    epochs: int = 1  # passes over the training examples
    max_steps: int = 0  # 0 = `epochs` decide
    eval_every: int = 0  # optimizer steps; 0 = before and after training only
    checkpoint_every: int = 50  # optimizer steps between Ray Train checkpoints (a killed run resumes)
    keep_checkpoints: int = 2  # checkpoints kept
    log_every: int = 1  # optimizer steps between loss reports
    merge: bool = False  # also write distill/merged (base + adapter in one checkpoint)
    refresh: Literal["retrain", "keep"] = "retrain"  # on a new data/teacher snapshot: retrain the adapter, or keep
    #   the one trained on an earlier snapshot (same settings otherwise); its manifest says which (extra.trained_on).
    #   keep: the student learns nothing from the new teacher rows, and its rows of unchanged users are reused as
    #   they are (comparable across snapshots); --force still retrains
    seed: int = 2024  # example order, validation split and LoRA init
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("run_dir", "cache_dir", "ray_address", "num_cpus", "log_every", "checkpoint_every",
                "keep_checkpoints", "torch_threads", "cpus_per_worker")


def stage_config(cfg: DistillConfig) -> dict:
    """What decides the adapter (not where or how verbosely it runs)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}


def check_resources(cfg: DistillConfig) -> None:
    """Fail before any work when the cluster cannot ever place the workers (Ray Train would wait forever)."""
    import ray

    res = ray.cluster_resources()
    if cfg.use_gpu and cfg.num_workers > res.get("GPU", 0):
        raise DistillError(
            f"distill.num_workers={cfg.num_workers} with distill.use_gpu=true needs {cfg.num_workers} GPUs, "
            f"but the Ray cluster has {int(res.get('GPU', 0))}; lower distill.num_workers or set use_gpu=false")
    need = cfg.num_workers * cfg.cpus_per_worker
    if need > res.get("CPU", 0):
        raise DistillError(f"distill.num_workers x cpus_per_worker = {need} CPUs, the Ray cluster has "
                           f"{res.get('CPU', 0)}")


def build_examples(cfg: DistillConfig, base_path: str, rd: RunDir) -> dict:
    """Tokenised train/val example files under distill/examples; returns the build report and sizes."""
    from transformers import AutoTokenizer

    from slim.distill import examples

    tok = AutoTokenizer.from_pretrained(base_path)
    df, report = examples.build(rd.root, tok, cfg.prompt, cfg.max_seq_len, cfg.max_examples,
                         cfg.keep_unstructured, cfg.structured)
    train, val = examples.split(df, cfg.val_fraction, cfg.max_val_examples, cfg.seed)
    if len(train) < cfg.num_workers * cfg.batch_size:
        raise DistillError(f"{len(train)} training examples cannot fill a micro-batch of distill.batch_size="
                           f"{cfg.batch_size} on each of distill.num_workers={cfg.num_workers}")
    examples.write(train, rd.path(EXAMPLES_DIR) / "train.parquet")
    examples.write(val, rd.path(EXAMPLES_DIR) / "val.parquet")
    for p in report.problems[:5]:
        log.warning("distill: dropped user %s: %s", *p)
    lens = train[examples.INPUT_IDS].map(len)
    return {**report.as_dict(), "train_examples": len(train), "val_examples": len(val),
            "val_users": val[C.USER_ID].tolist(), "mean_tokens": float(lens.mean()), "max_tokens": int(lens.max())}


def loop_config(cfg: DistillConfig, base_path: str, rd: RunDir) -> dict:
    conf = dataclasses.asdict(cfg)
    ex = rd.path(EXAMPLES_DIR).resolve()  # workers read the examples from the run dir (shared mount or bucket)
    conf.update(base_path=base_path, bf16=cfg.use_gpu, train_path=str(ex / "train.parquet"),
                val_path=str(ex / "val.parquet"))
    return conf


def fit(cfg: DistillConfig, conf: dict, ray_dir, name: str):
    """Run the Ray Train job; a folder left by a killed run with the same name is resumed from."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from slim.distill.trainloop import train_loop

    where, fs = storage.ray_paths(ray_dir)
    trainer = TorchTrainer(
        train_loop, train_loop_config=conf,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            # on object storage Ray Train uploads each worker's checkpoint itself (a filesystem from slim.io.storage)
            name=name, storage_path=str(where), storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    return off_main_thread(trainer.fit)  # fit() on the main thread would take SIGINT from the job for good


def _publish(src: Path, dst: Path) -> None:
    """Copy a folder into place whole: a reader sees the old one or the new one, never half."""
    with atomic.writing(dst, replace_dir=True) as tmp:
        shutil.copytree(src, tmp)


def merge(base_path: str, adapter: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    adapter = storage.local_copy(adapter)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    with atomic.writing(out, replace_dir=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp)


def run(cfg: DistillConfig, force: bool = False) -> Manifest:
    from slim.runtime.llm_models import resolve
    from slim.runtime.raycluster import init_ray

    rd = RunDir(cfg.run_dir)
    inputs = {C.DATA_DIR: rd.upstream(C.DATA_DIR), C.TEACHER_DIR: rd.upstream(C.TEACHER_DIR)}
    scfg = stage_config(cfg)
    if not force and rd.is_current(STAGE, scfg, inputs):
        return rd.read_manifest(STAGE)
    from slim.distill.refresh import keep

    kept = None if force else keep(cfg, rd, scfg, inputs)
    if kept is not None:
        return kept
    init_ray(cfg.ray_address, cfg.num_cpus)
    check_resources(cfg)
    t0 = time.perf_counter()
    rd.invalidate(STAGE)
    base_path = resolve(cfg.base_model, cfg.cache_dir)
    built = build_examples(cfg, base_path, rd)
    t_build = time.perf_counter()
    name = "distill-" + Manifest(STAGE, scfg, inputs).key()
    ray_dir = rd.path(RAY_DIR).resolve()
    if force:
        storage.remove_tree(ray_dir)
    result = fit(cfg, loop_config(cfg, base_path, rd), ray_dir, name)
    t_fit = time.perf_counter()
    from slim.distill.trainloop import ADAPTER_DIR, STATE_FILE

    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        _publish(Path(d) / ADAPTER_DIR, rd.path(C.STUDENT_ADAPTER))
    outputs = [C.STUDENT_ADAPTER, TRAIN_METRICS]
    if cfg.merge:
        merge(base_path, rd.path(C.STUDENT_ADAPTER), rd.path(C.STUDENT_MERGED))
        outputs.append(C.STUDENT_MERGED)
    metrics = summarize(cfg, state, built)
    atomic.write_json(rd.path(TRAIN_METRICS), metrics)
    m = Manifest(STAGE, scfg, inputs, outputs=outputs,
                 counts={k: v for k, v in built.items() if isinstance(v, int)},
                 timings={"build_s": t_build - t0, "fit_s": t_fit - t_build, "total_s": time.perf_counter() - t0},
                 extra={"base_path": base_path, "val_loss_before": metrics["val_loss_before"],
                        "val_loss_after": metrics["val_loss_after"], "tokens_per_s": metrics["tokens_per_s"],
                        "refresh": "trained"})  # trained on its own inputs (refresh.keep falls back to them)
    rd.write_manifest(m)
    storage.remove_tree(ray_dir)  # the adapter and manifest are out; checkpoints are no longer needed
    print_summary(metrics, rd)
    return m


def summarize(cfg: DistillConfig, state: dict, built: dict) -> dict:
    val = state["val"]
    return {
        "strategy": cfg.strategy, "num_workers": cfg.num_workers, "use_gpu": cfg.use_gpu,
        "zero_stage": cfg.deepspeed.zero_stage if cfg.strategy == "deepspeed" else None,
        "steps": state["step"], "sessions": state["sessions"], "tokens": state["tokens"],
        "train_seconds": state["train_seconds"], "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9),
        "val_loss_before": val[0]["val_loss"] if val and val[0]["step"] == 0 else None,
        "val_loss_after": val[-1]["val_loss"] if val else None,
        "train": state["train"], "val": val, "examples": built,
    }


def print_summary(metrics: dict, rd: RunDir) -> None:
    ex = metrics["examples"]
    tr = metrics["train"]
    lines = [
        "distill summary",
        f"  strategy {metrics['strategy']} x{metrics['num_workers']}  steps {metrics['steps']}  "
        f"sessions started at steps {metrics['sessions']}",
        f"  examples: {ex['train_examples']} train / {ex['val_examples']} val from {ex['rows']} teacher rows; "
        f"dropped: {ex['not_ok_status']} not ok, {ex['empty']} empty, {ex['unparsable']} unparsable, "
        f"{ex['dropped_too_long']} too long; {ex['history_truncated']} histories shortened"
        + (f"; {ex['kept_unstructured']} kept without the three steps" if ex.get("kept_unstructured") else ""),
        f"  train loss {tr[0]['loss']:.4f} -> {tr[-1]['loss']:.4f}" if tr else "  no training steps",
        "  val loss " + " -> ".join("n/a" if v is None else f"{v:.4f}"
                                    for v in (metrics["val_loss_before"], metrics["val_loss_after"])),
        f"  {metrics['tokens_per_s']:.0f} tokens/s over {metrics['train_seconds']:.1f} s of training",
        f"  adapter: {rd.path(C.STUDENT_ADAPTER)}",
    ]
    for line in lines:
        say(line)


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these; a member left
# out takes the face's default (own_inputs: {}, every input is an upstream stage's output).
CONFIG = DistillConfig
WRITES = (STAGE,)


def reads(cfg: DistillConfig) -> list[str]:
    return [C.DATA_DIR, C.TEACHER_DIR]


def resources(cfg: DistillConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line

    return [model_line("distill.base_model", cfg.base_model, cfg.cache_dir, problems)]
