"""How a worker updates the LoRA weights: plain DDP, or a DeepSpeed ZeRO engine. One small interface, two classes.

Both see a micro-batch at a time and the loss as the model computes it (mean over rationale tokens of that
micro-batch); gradient accumulation divides it by `grad_accum` (DeepSpeed does so itself), and the optimizer steps
on the last micro-batch of each window. Checkpoints hold only trainable weights and optimizer state: the base
model is frozen and reloaded from its own files.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from slim.io import atomic

DDP_STATE = "ddp_state.pt"
DS_TAG = "deepspeed"


def lr_lambda(warmup: int, total: int):
    """Linear warmup, then cosine decay to 10% of the peak."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return f


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


class DDPStrategy:
    """torch DDP via Ray Train's prepare_model (gloo on CPU, nccl on GPU); autocast bf16 on GPU."""

    def __init__(self, model, conf: dict, total_steps: int):
        import torch
        import ray.train.torch as rtt

        self.peft_model = model
        self.model = rtt.prepare_model(model, parallel_strategy="ddp")  # moves to the device; DDP if world > 1
        self.accum = conf["grad_accum"]
        self.clip = conf["max_grad_norm"]
        self.bf16 = conf["bf16"]
        self.opt = torch.optim.AdamW(trainable(model), lr=conf["lr"], weight_decay=conf["weight_decay"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(conf["warmup_steps"], total_steps))

    def _autocast(self):
        import torch

        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, batch):
        with self._autocast():
            return self.model(**batch).loss

    def train_micro(self, batch, boundary: bool) -> float:
        import torch

        # Skip the gradient all-reduce on all but the last micro-batch of a window.
        sync = contextlib.nullcontext() if boundary or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            loss = self.loss(batch)
            (loss / self.accum).backward()
        if boundary:
            if self.clip:
                torch.nn.utils.clip_grad_norm_(trainable(self.peft_model), self.clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def save(self, d: Path, rank: int) -> None:
        import torch

        if rank == 0:  # DDP replicas are identical
            state = {n: p.detach().cpu() for n, p in self.peft_model.named_parameters() if p.requires_grad}
            torch.save({"trainable": state, "opt": self.opt.state_dict(), "sched": self.sched.state_dict()},
                       d / DDP_STATE)

    def load(self, d: Path) -> None:
        import torch

        st = torch.load(d / DDP_STATE, map_location="cpu", weights_only=True)
        params = dict(self.peft_model.named_parameters())
        with torch.no_grad():
            for n, t in st["trainable"].items():
                params[n].copy_(t)
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])

    def reports_checkpoint(self, rank: int) -> bool:
        return rank == 0


class DeepSpeedStrategy:
    """DeepSpeed ZeRO (stage and offload from the config), reusing the process group Ray Train set up."""

    def __init__(self, model, conf: dict, total_steps: int):
        import deepspeed
        import torch

        self.peft_model = model
        ds = conf["deepspeed"]
        zero = {"stage": ds["zero_stage"]}
        if ds["offload_optimizer"]:
            zero["offload_optimizer"] = {"device": "cpu"}
        if ds["offload_param"]:
            zero["offload_param"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": conf["batch_size"],
            "gradient_accumulation_steps": conf["grad_accum"],
            "train_batch_size": conf["batch_size"] * conf["grad_accum"] * conf["world_size"],
            "gradient_clipping": conf["max_grad_norm"] or 0.0,
            "zero_optimization": zero,
            "bf16": {"enabled": conf["bf16"]},
            # torch's AdamW: DeepSpeedCPUAdam would compile a C++ op for minutes on first use.
            "optimizer": {"type": "AdamW", "params": {"lr": conf["lr"], "weight_decay": conf["weight_decay"],
                                                      "torch_adam": True}},
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
        }
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=model, model_parameters=trainable(model), config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda(conf["warmup_steps"], total_steps)),
        )
        self.stage = ds["zero_stage"]

    def loss(self, batch):
        return self.engine(**batch).loss

    def train_micro(self, batch, boundary: bool) -> float:
        loss = self.loss(batch)
        self.engine.backward(loss)  # scales by 1/grad_accum itself
        self.engine.step()  # steps the optimizer and scheduler only at an accumulation boundary
        return float(loss.detach())

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def save(self, d: Path, rank: int) -> None:
        # Every rank writes its ZeRO optimizer shard; Ray Train merges the workers' folders into one checkpoint.
        self.engine.save_checkpoint(str(d), tag=DS_TAG, exclude_frozen_parameters=True)

    def load(self, d: Path) -> None:
        self.engine.load_checkpoint(str(d), tag=DS_TAG, load_module_strict=False)

    def reports_checkpoint(self, rank: int) -> bool:
        return True

    @contextlib.contextmanager
    def gathered(self):
        """ZeRO-3 partitions the weights; gather the trainable ones to save the adapter."""
        if self.stage < 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(trainable(self.peft_model), modifier_rank=None):
            yield


STRATEGIES = {"ddp": DDPStrategy, "deepspeed": DeepSpeedStrategy}


def write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj, sort_keys=True)
