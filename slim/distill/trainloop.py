"""The per-worker training function run by Ray Train's TorchTrainer (one process per worker).

Data order is a pure function of (seed, global micro-batch index), so a worker resumed at optimizer step k
reads exactly the micro-batches it would have read: no data-loader state in the checkpoint. Each worker takes
every world_size-th example of an epoch's permutation, the same count on every worker.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from slim.distill.examples import IGNORE, INPUT_IDS, LABELS

log = logging.getLogger(__name__)
STATE_FILE = "train_state.json"
ADAPTER_DIR = "adapter"


def load_model(conf: dict):
    """Tokenizer and the base model with fresh LoRA layers; every base weight frozen."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(conf["base_path"])
    model = AutoModelForCausalLM.from_pretrained(
        conf["base_path"], dtype=torch.bfloat16 if conf["bf16"] else torch.float32)
    model.config.use_cache = False  # training: no KV cache
    lora = conf["lora"]
    lcfg = peft.LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                           target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")
    return tok, peft.get_peft_model(model, lcfg)  # get_peft_model freezes everything but the adapter


def collate(rows: list[dict], pad_id: int, device) -> dict:
    """Right-padded tensors: input_ids/attention_mask/labels [B, T], T = longest row; pads carry no loss."""
    import torch

    t = max(len(r[INPUT_IDS]) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r[INPUT_IDS])
        ids[i, :n] = torch.as_tensor(r[INPUT_IDS])
        labels[i, :n] = torch.as_tensor(r[LABELS])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class Batches:
    """Micro-batch g of this worker, for any global micro-batch index g."""

    def __init__(self, rows: list[dict], batch_size: int, rank: int, world: int, seed: int):
        self.rows, self.bs, self.rank, self.world, self.seed = rows, batch_size, rank, world, seed
        self.per_worker = len(rows) // world
        self.per_epoch = max(1, -(-self.per_worker // batch_size))  # micro-batches per epoch per worker

    def __call__(self, g: int) -> list[dict]:
        epoch, j = divmod(g, self.per_epoch)
        perm = np.random.default_rng(self.seed + epoch).permutation(len(self.rows))
        mine = perm[self.rank::self.world][: self.per_worker]
        return [self.rows[i] for i in mine[j * self.bs:(j + 1) * self.bs]]


def all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def evaluate(strategy, rows: list[dict], conf: dict, rank: int, world: int, pad_id: int, device) -> float:
    """Mean loss per rationale token over the held-out examples, split across workers."""
    import torch

    strategy.train(False)
    tot, n = 0.0, 0.0
    bs, mine = conf["batch_size"], rows[rank::world]
    # every rank runs as many forward passes as the rank with the most rows: a DDP forward is a collective (it
    # syncs buffers), so a rank with fewer held-out rows (1 row, 2 workers) would otherwise leave the others waiting
    # forever. The extra passes score a real row and are not counted.
    passes = -(-(-(-len(rows) // world)) // bs)
    with torch.no_grad():
        for k in range(0, passes * bs, bs):
            part = mine[k:k + bs]
            batch = collate(part or rows[:1], pad_id, device)
            count = float((batch["labels"][:, 1:] != IGNORE).sum()) if part else 0.0  # shifted: t predicts t+1
            tot += float(strategy.loss(batch)) * count
            n += count
    strategy.train(True)
    tot, n = all_sum([tot, n], device)
    return tot / max(n, 1.0)


def _rows(path: str) -> list[dict]:
    from slim.io import storage  # the run dir's examples, local (a shared mount) or on object storage

    t = storage.read_table(path, columns=[INPUT_IDS, LABELS]).to_pydict()
    return [{INPUT_IDS: a, LABELS: b} for a, b in zip(t[INPUT_IDS], t[LABELS])]


def train_loop(conf: dict) -> None:
    import ray.train
    import ray.train.torch as rtt
    import torch

    from slim.distill.strategies import STRATEGIES

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(conf["torch_threads"])
    torch.manual_seed(conf["seed"] + rank)
    device = rtt.get_device()
    train_rows, val_rows = _rows(conf["train_path"]), _rows(conf["val_path"])
    batches = Batches(train_rows, conf["batch_size"], rank, world, conf["seed"])
    steps_per_epoch = max(1, batches.per_epoch // conf["grad_accum"])
    total = conf["max_steps"] or conf["epochs"] * steps_per_epoch
    tok, model = load_model(conf)
    conf = dict(conf, world_size=world)
    strategy = STRATEGIES[conf["strategy"]](model, conf, total)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    state = {"step": 0, "train": [], "val": [], "sessions": [], "tokens": 0, "train_seconds": 0.0}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            strategy.load(Path(d))
            state = json.loads((Path(d) / STATE_FILE).read_text())
    state["sessions"].append(state["step"])  # where each (re)start began: resume continues, never restarts
    if state["step"] == 0 and val_rows:
        state["val"].append({"step": 0, "val_loss": evaluate(strategy, val_rows, conf, rank, world, pad_id, device)})
    if rank == 0:
        log.info("distill: %d train / %d val examples, %d workers, %d steps (%d per epoch), starting at step %d",
                 len(train_rows), len(val_rows), world, total, steps_per_epoch, state["step"])
    reported_final = False
    while state["step"] < total:
        step = state["step"]
        t0 = time.perf_counter()
        losses, ntok = [], 0
        for m in range(conf["grad_accum"]):
            batch = collate(batches(step * conf["grad_accum"] + m), pad_id, device)
            ntok += int(batch["attention_mask"].sum())
            losses.append(strategy.train_micro(batch, boundary=m == conf["grad_accum"] - 1))
        loss, ntok = all_sum([float(np.mean(losses)), ntok], device)
        state["train_seconds"] += time.perf_counter() - t0
        state["tokens"] += int(ntok)
        state["step"] = step = step + 1
        state["train"].append({"step": step, "loss": loss / world, "lr": strategy.lr(), "tokens": int(ntok)})
        if rank == 0 and (step % conf["log_every"] == 0 or step == total):
            log.info("distill step %d/%d loss %.4f lr %.2e %.0f tok/s", step, total, loss / world,
                     strategy.lr(), state["tokens"] / max(state["train_seconds"], 1e-9))
        if val_rows and (step == total or (conf["eval_every"] and step % conf["eval_every"] == 0)):
            state["val"].append({"step": step, "val_loss": evaluate(strategy, val_rows, conf, rank, world,
                                                                     pad_id, device)})
        if step == total or step % conf["checkpoint_every"] == 0:
            _report(strategy, model, tok, state, rank, final=step == total)
            reported_final = step == total
    if not reported_final:  # resumed after the final checkpoint: report it again so the driver gets it
        _report(strategy, model, tok, state, rank, final=True)


def _report(strategy, model, tok, state: dict, rank: int, final: bool) -> None:
    import ray.train

    metrics = {"step": state["step"], "train_loss": state["train"][-1]["loss"] if state["train"] else None,
               "val_loss": state["val"][-1]["val_loss"] if state["val"] else None,
               "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9)}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        strategy.save(d, rank)
        gathered = getattr(strategy, "gathered", None)
        if final:
            with gathered() if gathered else _null():
                if rank == 0:
                    model.save_pretrained(d / ADAPTER_DIR)  # PEFT adapter: adapter_config.json + safetensors
                    tok.save_pretrained(d / ADAPTER_DIR)
        if rank == 0:
            (d / STATE_FILE).write_text(json.dumps(state))
        ckpt = ray.train.Checkpoint.from_directory(tmp) if strategy.reports_checkpoint(rank) else None
        ray.train.report(metrics, checkpoint=ckpt)


def _null():
    import contextlib

    return contextlib.nullcontext()
