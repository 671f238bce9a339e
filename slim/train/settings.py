"""What the runs of one train stage share beyond each run's own `RunSpec` (slim.recsys.spec): how they are
validated and tested, where and on what they run, where they are tracked. Built once from the stage's config
(slim.train.stage.run_settings) and handed down to the fan-out, the Ray Train path and the search, so none of them
reads the stage config (and nothing below the stage imports it). No defaults: TrainConfig's are the only ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from slim.runtime.tracking import TrackingConfig


# What a run reports after each epoch to a search (slim.train.trials), by key: its validation NDCG@10 (the
# epoch records' own key, and ASHA's metric) and, on the Ray Train path, its workers' placement group.
METRIC = "valid_ndcg10"
PLACEMENT = "placement_group"


@dataclass(frozen=True)
class RunSettings:
    valid_protocol: str  # early stopping and the sum fusion's weight on valid NDCG@10 under this protocol
    test_protocols: tuple[str, ...]  # each run's metrics.json has valid and test under these
    max_epochs: int  # train.epochs: the console's ETA and the search's ASHA horizon
    run_dir: str
    # the cluster: Ray to join or start, and what one run asks of it
    ray_address: Optional[str]
    num_cpus: Optional[int]
    cpus_per_run: float
    threads_per_run: int
    tracking: TrackingConfig
    # the Ray Train path (ddp / deepspeed): workers, devices, mixed precision, rank 0's evaluation blocks
    strategy: str
    num_workers: int
    use_gpu: bool
    amp: str
    eval_block_users: int
