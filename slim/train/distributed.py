"""One large run on Ray Train `TorchTrainer`: DDP (gloo on CPU, nccl on GPU) or DeepSpeed ZeRO-2.

Each worker trains on its shard of the training examples, read from a Ray Data dataset (slim.train.ingest); rank 0
evaluates the validation split after every epoch and broadcasts the early-stopping decision, and at the end writes
the best weights + metrics.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from slim.io import storage
from slim.recsys.spec import RunSpec, build_model, example_kind
from slim.train.settings import METRIC, PLACEMENT, RunSettings
from slim.runtime.signals import off_main_thread


class _Step(nn.Module):
    """The loss as a module forward, so DDP/DeepSpeed see one forward per step (gradient sync hooks)."""

    def __init__(self, model, spec, present=None):
        super().__init__()
        self.model, self.spec, self.present = model, spec, present  # present: recsys.data.present_ids

    def forward(self, x, y, lens, gen, text=None, use=None):
        from slim.train.loop import batch_loss

        return batch_loss(self.model, self.spec, x, y, lens, gen, text, use, present=self.present)


def _wrap(step: _Step, spec, strategy: str):
    """-> (callable step, backward fn, optimizer step fn)."""
    if strategy == "deepspeed":
        import deepspeed  # heavy; only here

        ds_cfg = {"train_micro_batch_size_per_gpu": spec.batch_size, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 2}, "gradient_clipping": 0.0}
        opt = torch.optim.Adam(step.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)  # no CPUAdam build
        engine, _, _, _ = deepspeed.initialize(model=step, optimizer=opt, config=ds_cfg)
        return engine, engine.backward, engine.step
    import ray.train.torch

    ddp = ray.train.torch.prepare_model(step, move_to_device=False)
    opt = torch.optim.Adam(ddp.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

    def opt_step():
        opt.step()
        opt.zero_grad()

    return ddp, (lambda loss: loss.backward()), opt_step


def on_device(fwd, device: torch.device, amp: str):
    """fwd with its batch moved to `device` (no-op on CPU) and, amp="bf16" on CUDA, run under bf16 autocast (the
    loss comes out fp32; no grad scaler: bf16 has fp32's range). CPU training stays fp32."""
    on = amp == "bf16" and device.type == "cuda"
    move = (lambda t: None if t is None else t.to(device, non_blocking=True))

    def forward(x, y, lens, gen, text=None, use=None):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on):
            return fwd(move(x), move(y), move(lens), gen, move(text), move(use))

    return forward


@dataclass(frozen=True)
class WorkerConfig:
    """What every Ray Train worker receives (`loop_config`): the spec and object refs, not the users."""
    spec: RunSpec
    num_items: int
    absent: Any  # ObjectRef of the item ids gone from the newest snapshot, None when every item is present
    text: Any  # ObjectRef of the item text vectors, None for an id run
    users: Any  # ObjectRef of (SeqData, UserText or None): rank 0's evaluation only
    rows: int  # training examples in each step of a rank (loop.batch_rows)
    examples: int  # training examples of one epoch
    out: Optional[str]  # models/<run>/, where rank 0 saves; None: no model saved (a search trial)
    fp: str  # the run's fingerprint, in its metrics.json
    strategy: str  # ddp | deepspeed
    valid_protocol: str
    test_protocols: tuple[str, ...]
    amp: str  # bf16 | none
    block_users: int  # rank 0 evaluates in Ray tasks of this many users each
    trace: Optional[str]  # see ingest.shard_batches (tests)


def _loop(loop_conf: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from slim.recsys.checkpoint import save_run
    from slim.recsys.data import present_ids
    from slim.train.ingest import TRAIN, placeholder, shard_batches
    from slim.recsys.blocks import BlockRanker
    from slim.runtime.threads import torch_threads
    from slim.train.loop import EarlyStop, Hooks, train_epochs

    conf: WorkerConfig = loop_conf["worker"]  # Ray Train hands its train_loop_config over as a dict
    spec = conf.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # this worker's GPU with use_gpu, else the CPU
    torch.manual_seed(spec.seed)  # same init on every rank
    torch_threads(spec.threads)  # train.threads_per_run, at most the cores this process may use
    text = None if conf.text is None else ray.get(conf.text)  # item vectors: part of every rank's model
    model = build_model(spec, conf.num_items, text).to(device)
    # items gone from the newest snapshot: never a negative (None: every item present, the draws as before)
    present = None if conf.absent is None else present_ids(conf.num_items, ray.get(conf.absent))
    fwd, backward, opt_step = _wrap(_Step(model, spec, present), spec, conf.strategy)
    fwd = on_device(fwd, device, conf.amp)
    torch.manual_seed(spec.seed + 7919 * rank)  # the init was the same everywhere; dropout masks differ per rank
    idle = placeholder(model.per_position, spec.user_text_dim)
    batches = shard_batches(ray.train.get_dataset_shard(TRAIN), conf.rows, device, idle, conf.trace, rank)
    # the negatives: a generator per rank, else every rank draws the same negatives for its step's targets
    gen = torch.Generator().manual_seed(spec.seed + 7919 * rank)
    stopper = EarlyStop(spec.patience, conf.valid_protocol)
    d, ut = ray.get(conf.users) if rank == 0 else (None, None)  # the users, for rank 0's evaluation only
    ranker = BlockRanker(d, conf.block_users) if rank == 0 else None  # in blocks on the cluster when they are many
    pg = ray.util.get_current_placement_group()  # the workers' group: a stopped search trial's is released (trials)
    group_id = pg.id.hex() if pg is not None else ""

    def end_epoch(epoch, loss, t0):
        stop = torch.zeros(1, device=device)  # nccl collectives take GPU tensors
        if rank == 0:  # rank 0's mean loss stands for the group's
            t_val = time.perf_counter()
            val = ranker.evaluate(model, "valid", (conf.valid_protocol,), spec.max_len, ut)[conf.valid_protocol]
            stop[0] = float(stopper.update(model, epoch, loss, val["NDCG@10"], time.perf_counter() - t_val))
        dist.broadcast(stop, src=0)
        last = stopper.history[-1] if rank == 0 else {}  # rank 0's report is the one a search trial reads
        ray.train.report({"epoch": epoch, METRIC: last.get(METRIC, 0.0), "loss": last.get("loss", 0.0),
                          "seconds": time.perf_counter() - t0, PLACEMENT: group_id})
        return bool(stop.item())

    n_targets, t_train = train_epochs(spec, model, Hooks(batches, fwd, backward, opt_step, end_epoch), gen)
    group = torch.tensor([n_targets], device=device)
    dist.all_reduce(group)  # the targets of the whole group: ranks' shares differ in targets per window
    if rank == 0 and conf.out is not None:
        rec = stopper.record(model, spec, d, conf.test_protocols, int(group.item()), t_train, ut, ranker.evaluate)
        save_run(storage.path(conf.out), model, spec, conf.num_items,
                 {**rec, "strategy": conf.strategy, "workers": world, "device": device.type,
                  "amp": conf.amp if device.type == "cuda" else "none", "train_examples": conf.examples},
                 conf.fp)


def loop_config(spec: RunSpec, d, text, ut, out, fp: str, shared: RunSettings, rows: int, examples: int,
                trace=None) -> WorkerConfig:
    """What every worker receives: the spec and object refs, not the users: the training examples come as Ray Data
    shards; the users' sequences (d, ut) are fetched by rank 0 alone, which evaluates (candidates are read where
    they are ranked: recsys.candidates)."""
    import ray

    return WorkerConfig(spec=spec, num_items=d.num_items, absent=ray.put(d.absent) if len(d.absent) else None,
                        text=None if text is None else ray.put(text), users=ray.put((d, ut)), rows=rows,
                        examples=examples, out=None if out is None else str(out), fp=fp, strategy=shared.strategy,
                        valid_protocol=shared.valid_protocol, test_protocols=tuple(shared.test_protocols),
                        amp=shared.amp, block_users=shared.eval_block_users, trace=trace)


def examples(spec: RunSpec, d, ut, shared: RunSettings) -> tuple:
    """The run's training examples, a materialized Ray Dataset -> (dataset, examples, targets of one epoch). Built
    where the run is started, or once for every trial of a search group (the trials differ in nothing it reads)."""
    from slim.train.ingest import example_dataset

    return example_dataset(example_kind(spec), d, spec.max_len, ut, world=shared.num_workers,
                           positions=spec.positions)


def train_distributed(spec: RunSpec, d, text, ut, out: Path | str, fp: str, shared: RunSettings,
                      trace: Optional[str] = None, save: bool = True, callbacks: tuple = (),
                      data: Optional[tuple] = None) -> dict:
    """One Ray Train run, named after out's folder, with Ray Train's own files beside it (out/../_ray); -> {"examples",
    "targets"} of one epoch. save=False: no model and no test evaluation at the end (a search trial, whose
    callbacks take the epochs' reports). data: `examples(...)` built before, else here. trace: see
    ingest.shard_batches."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from slim.runtime.raycluster import init_ray
    from slim.train.ingest import TRAIN, NoDropSplit, epoch_shuffled
    from slim.train.loop import batch_rows

    init_ray(shared.ray_address, shared.num_cpus)
    where, fs = storage.ray_paths(storage.path(out).parent.resolve() / "_ray")  # a bucket: Ray Train uploads
    ds, n_ex, n_tg = data or examples(spec, d, ut, shared)
    rows = batch_rows(spec, n_tg / max(1, n_ex) if example_kind(spec)[0] else None)  # [0]: per-position examples
    trainer = TorchTrainer(
        _loop, train_loop_config={"worker": loop_config(spec, d, text, ut, out if save else None, fp, shared, rows,
                                                        n_ex, trace)},
        scaling_config=ScalingConfig(num_workers=shared.num_workers, use_gpu=shared.use_gpu,
                                     resources_per_worker={"CPU": shared.cpus_per_run}),
        torch_config=TorchConfig(backend="nccl" if shared.use_gpu else "gloo"),
        run_config=RunConfig(name=f"train-{storage.path(out).name}", storage_path=str(where), storage_filesystem=fs,
                             callbacks=list(callbacks)),
        datasets={TRAIN: epoch_shuffled(ds, spec.seed)}, dataset_config=NoDropSplit(),
    )
    off_main_thread(trainer.fit)  # fit() on the main thread would take SIGINT from the job for good
    return {"examples": n_ex, "targets": n_tg}

