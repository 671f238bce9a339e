"""The `train` stage: backbones x variants x seeds, fanned out as Ray tasks (or one big Ray Train run each).

Every run writes models/<backbone>-<variant>-s<seed>/{model.pt, metrics.json}; metrics.json is written last and
atomically and carries the run's fingerprint, so a rerun skips finished runs and redoes killed ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim.columns import EVAL_PROTOCOLS
from slim.models import REGISTRY as BACKBONES
from slim.models import GRU4RecConfig, SASRecConfig, SRGNNConfig
from slim.models.item_repr import VARIANTS
from slim.rundir import Manifest, RunDir, fingerprint

log = logging.getLogger(__name__)

STAGE = "train"
MODELS_DIR = "models"
WEIGHTS, METRICS = "model.pt", "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/default"
    # Literal[<constant>]: the names are checked at load against the code that implements them
    backbones: tuple[Literal[tuple(BACKBONES)], ...] = ("gru4rec", "sasrec", "srgnn")
    variants: tuple[Literal[VARIANTS], ...] = ("id", "id_text")
    seeds: tuple[int, ...] = (0, 1, 2)
    hidden: int = 64
    max_len: int = 50
    epochs: int = 20
    patience: int = 3  # epochs without a better valid NDCG@10 before stopping
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: Literal["bce", "ce"] = "bce"  # bce = sampled negatives (the paper); ce = full softmax
    num_negatives: int = 1
    gru4rec: GRU4RecConfig = GRU4RecConfig()
    sasrec: SASRecConfig = SASRecConfig()
    srgnn: SRGNNConfig = SRGNNConfig()
    max_users: int = 0  # 0 = all users; else a fixed-seed subsample (reduced benchmarks)
    subsample_seed: int = 0
    valid_protocol: Literal["uni100", "pop100"] = "uni100"
    test_protocols: tuple[Literal[EVAL_PROTOCOLS], ...] = ("uni100", "pop100", "full")
    text_encoder: str = "all-MiniLM-L6-v2"
    strategy: Literal["fanout", "ddp", "deepspeed"] = "fanout"
    num_workers: int = 2  # Ray Train workers for ddp/deepspeed
    cpus_per_run: float = 1.0  # Ray CPUs per fanned-out run (fractional is fine)
    threads_per_run: int = 1  # torch threads inside a run
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("run_dir", "ray_address", "num_cpus", "strategy", "num_workers", "cpus_per_run", "threads_per_run")


def stage_config(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}


def specs(cfg: TrainConfig) -> list:
    from slim.models import REGISTRY, VARIANTS
    from slim.recsys.train import RunSpec

    for b in cfg.backbones:
        if b not in REGISTRY:
            raise ValueError(f"train.backbones: unknown backbone {b!r}; known: {', '.join(REGISTRY)}")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise ValueError(f"train.variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    common = dict(hidden=cfg.hidden, max_len=cfg.max_len, epochs=cfg.epochs, patience=cfg.patience,
                  batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=cfg.loss,
                  num_negatives=cfg.num_negatives, threads=cfg.threads_per_run)
    return [RunSpec(b, v, s, backbone_cfg=dataclasses.asdict(getattr(cfg, b)), **common)
            for b in cfg.backbones for v in cfg.variants for s in cfg.seeds]


def run_fingerprint(spec, inputs: dict, cfg: TrainConfig) -> str:
    d = dataclasses.asdict(spec)
    d.pop("threads")
    if spec.variant == "id":  # an id run does not depend on the item-text table
        inputs = {k: v for k, v in inputs.items() if k != "item_text"}
    return fingerprint({"spec": d, "inputs": inputs, "max_users": cfg.max_users,
                        "subsample_seed": cfg.subsample_seed, "valid": cfg.valid_protocol,
                        "test": list(cfg.test_protocols), "encoder": cfg.text_encoder})


def is_done(out: Path, fp: str) -> bool:
    p = out / METRICS
    return p.exists() and json.loads(p.read_text()).get("fingerprint") == fp


def save_run(out: Path, model, spec, num_items: int, rec: dict, fp: str) -> dict:
    """Weights first, metrics.json last (atomic): a run with metrics.json is complete."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (WEIGHTS + ".tmp")
    torch.save({"spec": dataclasses.asdict(spec), "num_items": num_items, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, out / WEIGHTS)
    rec = {**rec, "fingerprint": fp}
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, out / METRICS)
    return rec


def _fit_and_save(spec, d, text, out: str, fp: str, cfg: TrainConfig) -> dict:
    from slim.recsys.train import fit

    t0 = time.time()
    model, rec = fit(spec, d, text, cfg.valid_protocol, cfg.test_protocols,
                     progress=lambda m: log.info("%s", m))
    rec["wall_seconds"] = time.time() - t0
    return save_run(Path(out), model, spec, d.num_items, rec, fp)


def fan_out(todo: list, d, text, root: Path, cfg: TrainConfig) -> list:
    """One Ray task per run; returns their metric records as they finish."""
    import ray

    from slim.raycluster import cores_request, init_ray

    init_ray(cfg.ray_address, cfg.num_cpus)
    # cores_request: at most cores // threads_per_run runs at once on the local cluster (it declares 2 x cores CPUs)
    task = ray.remote(num_cpus=cfg.cpus_per_run, resources=cores_request(cfg.threads_per_run),
                      max_retries=1)(_fit_and_save)
    d_ref, t_ref = ray.put(d), ray.put(text)  # shared once through the object store, not per task
    pending = {task.remote(s, d_ref, t_ref, str(root / MODELS_DIR / s.name), fp, cfg): s for s, fp in todo}
    out = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ready[0])
        rec = ray.get(ready[0])
        out.append(rec)
        log.info("[%d/%d] %s test uni100 NDCG@10 %.2f (%.0f targets/s)", len(out), len(todo), spec.name,
                 rec["test"]["uni100"]["NDCG@10"] if "uni100" in rec["test"] else float("nan"),
                 rec["targets_per_s"])
    return out


def run(cfg: TrainConfig, force: bool = False) -> Manifest:
    from slim.recsys import data as D
    from slim.recsys import text as T

    rd = RunDir(cfg.run_dir)
    all_specs = specs(cfg)
    inputs = {"data": rd.upstream("data")}
    need_text = any(s.variant != "id" for s in all_specs)
    text = T.item_text(rd.root, cfg.text_encoder) if need_text else None
    if need_text:
        inputs["item_text"] = T.fingerprint(rd.root, cfg.text_encoder)
    if not force and rd.is_current(STAGE, stage_config(cfg), inputs):
        log.info("train: up to date in %s", rd.root)
        return rd.read_manifest(STAGE)
    t0 = time.time()
    todo = []
    for s in all_specs:
        fp = run_fingerprint(s, inputs, cfg)
        if force or not is_done(rd.root / MODELS_DIR / s.name, fp):
            todo.append((s, fp))
    log.info("train: %d of %d runs to do (%s)", len(todo), len(all_specs), cfg.strategy)
    if todo:
        d = D.load(rd.root, cfg.max_users, cfg.subsample_seed)
        if cfg.strategy == "fanout":
            fan_out(todo, d, text, rd.root, cfg)
        else:
            from slim.recsys.distributed import train_distributed

            for s, fp in todo:
                train_distributed(s, d, text, rd.root / MODELS_DIR / s.name, fp, cfg)
    recs = [json.loads((rd.root / MODELS_DIR / s.name / METRICS).read_text()) for s in all_specs]
    m = Manifest(STAGE, stage_config(cfg), inputs, outputs=[f"{MODELS_DIR}/{s.name}" for s in all_specs],
                 counts={"runs": len(all_specs), "trained_now": len(todo)},
                 timings={"total_s": time.time() - t0},
                 extra={"targets_per_s": {r["run"]: r["targets_per_s"] for r in recs}})
    rd.write_manifest(m)
    _summary(recs)
    return m


def _summary(recs: list) -> None:
    print(f"{'run':28s} {'epochs':>6s} {'valid N@10':>10s} {'test N@10':>10s} {'targets/s':>10s}")
    for r in recs:
        t = r["test"].get("uni100", {}).get("NDCG@10", float("nan"))
        print(f"{r['run']:28s} {r['epochs_run']:6d} {r['best_valid_ndcg10']:10.2f} {t:10.2f} "
              f"{r['targets_per_s']:10.0f}")
    print("(uni100 chance NDCG@10 4.50)")


def load_model(path: str | Path, item_text: Optional[np.ndarray] = None):
    """A saved run -> (model, RunSpec). The text buffer is in the weights, so item_text is not needed."""
    import torch

    from slim.recsys.train import RunSpec, build_model

    ck = torch.load(Path(path) / WEIGHTS, map_location="cpu", weights_only=False)
    spec = RunSpec(**ck["spec"])
    if spec.variant != "id" and item_text is None:  # shape placeholder; load_state_dict fills the values
        item_text = np.zeros(tuple(ck["state_dict"]["items.text"].shape), dtype=np.float32)
    model = build_model(spec, ck["num_items"], item_text)
    model.load_state_dict(ck["state_dict"])
    return model.eval(), spec
