"""The `train` stage: backbones x variants x seeds, fanned out as Ray tasks (or one big Ray Train run each).

Every run writes models/<backbone>-<variant>-<loss>-s<seed>/{model.pt, metrics.json} (text matching:
models/text_match-<field>-<loss>-s<seed>/); metrics.json is written last and atomically and carries the run's
fingerprint (its spec and the inputs it read), so a rerun skips finished runs and redoes killed or stale ones: a new
student run retrains the rows that read rationales, not the `id` rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim.io import columns as C
from slim.io.columns import EVAL_PROTOCOLS, MODELS_DIR
from slim.io.rundir import Manifest, RunDir, fingerprint, peak_rss_mb
from slim.models import REGISTRY as BACKBONES
from slim.models.item_repr import FUSED_USER_VARIANTS, VARIANTS
from slim.recsys.checkpoint import METRICS, is_done
from slim.recsys.data import POSITIONS
from slim.recsys.spec import RunSpec
from slim.recsys.summary import scale_line
from slim.runtime.console import Progress, say
from slim.runtime.tracking import Tracker, TrackingConfig
from slim.train.fingerprints import spec_fingerprint
from slim.train.search import SearchConfig
from slim.train.settings import RunSettings

log = logging.getLogger(__name__)

STAGE = C.TRAIN_DIR


@dataclass(frozen=True)
class TrainConfigBase:
    """The train stage's settings but the backbones' own sections: TrainConfig below adds those. A run's
    hyperparameters default to RunSpec's (slim.recsys.spec): each default is said once, there."""
    run_dir: str = "runs/default"
    # Literal[<constant>]: the names are checked at load against the code that implements them
    backbones: tuple[Literal[tuple(BACKBONES)], ...] = ("gru4rec", "sasrec", "srgnn")
    variants: tuple[Literal[VARIANTS], ...] = ("id", "id_text")  # + slim, slim_teacher, text_match
    seeds: tuple[int, ...] = (0, 1, 2)  # one run per seed; the report gives mean ± std over them
    hidden: int = RunSpec.hidden  # ID embedding and sequence-state size of every backbone
    max_len: int = RunSpec.max_len  # most recent items a sequence model sees
    epochs: int = RunSpec.epochs  # at most; early stopping (patience) usually ends sooner
    patience: int = RunSpec.patience  # epochs without a better valid NDCG@10 before stopping
    batch_size: int = RunSpec.batch_size  # next-item targets per training batch (as a RecBole row is one target)
    lr: float = RunSpec.lr  # Adam learning rate
    weight_decay: float = RunSpec.weight_decay  # Adam L2 penalty
    losses: tuple[Literal["bce", "ce"], ...] = ("bce",)  # bce = sampled negatives (the paper); ce = full softmax
    num_negatives: int = RunSpec.num_negatives  # bce: uniformly sampled negatives per target (the paper: 1)
    max_users: int = 0  # 0 = all users; else those whose raw ids hash smallest with subsample_seed (reduced benchmarks)
    subsample_seed: int = 0  # the seed of the max_users subsample
    # model selection (early stopping, the sum fusion's weight) on the validation target under this protocol: full
    # ranking, the headline, by default (a sampled protocol favours epochs that separate easy negatives by text)
    valid_protocol: Literal["full", "uni100", "pop100"] = "full"
    test_protocols: tuple[Literal[EVAL_PROTOCOLS], ...] = ("uni100", "pop100", "full")  # in each run's metrics.json
    text_encoder: str = "all-MiniLM-L6-v2"  # item text vectors: the encode stage's when it used this model
    rationale_field: Literal["whole", "step1", "step2", "step3"] = "whole"  # what slim / slim_teacher fuse
    # text_match: one run per field; "history" matches on the no-LLM control's vector (the prompt's titles)
    text_match_fields: tuple[Literal["whole", "step1", "step2", "step3", "history"], ...] = (
        "whole", "step1", "step2", "step3")
    # where user text is fused in training, one run per entry (slim.recsys.data.rationale_positions): after_prefix
    # (only targets after the prompt's prefix: none named in the text) or all (the paper's: every position)
    rationale_positions: tuple[Literal[POSITIONS], ...] = ("after_prefix",)
    # How item text is used by id_text / slim / slim_teacher: one run per entry (slim.models.fusion); concat is the
    # paper's. sum (late fusion of an ID and a text-only model) applies to id_text only.
    text_fusions: tuple[Literal["concat", "init", "sum", "align"], ...] = ("concat",)
    align_weight: float = RunSpec.align_weight  # text_fusions align: weight of the ID-to-text alignment loss
    # fanout: one single-process run per Ray task, many at once; ddp / deepspeed: a run on num_workers Ray Train
    # workers
    strategy: Literal["fanout", "ddp", "deepspeed"] = "fanout"
    num_workers: int = 2  # Ray Train workers for ddp/deepspeed
    use_gpu: bool = False  # ddp/deepspeed: one GPU per Ray Train worker, nccl (CPU workers use gloo)
    amp: Literal["bf16", "none"] = "none"  # bf16 autocast of the training forward on GPU workers; CPU stays fp32
    eval_block_users: int = 50_000  # ddp/deepspeed: rank 0 evaluates in Ray tasks of this many users each
    cpus_per_run: float = 1.0  # Ray CPUs per fanned-out run (fractional is fine)
    threads_per_run: int = RunSpec.threads  # torch threads inside a run
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    # MLflow tracking of every trained model (slim.runtime.tracking); the top-level `tracking:` unless set here
    tracking: TrackingConfig = TrackingConfig()
    # a Ray Tune search per row group before the seed runs (slim.train.search): the same trials for every group
    search: SearchConfig = SearchConfig()


# One section per registered backbone (train.gru4rec.layers, train.sasrec.heads, ...), typed by the config class its
# registry entry names, its defaults that class's: a new backbone is its module and its registry line, no field here.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(name, conf, dataclasses.field(default=conf())) for name, (_, conf) in BACKBONES.items()],
    bases=(TrainConfigBase,), frozen=True)
TrainConfig.__module__ = __name__  # pickled by name (Python 3.11's make_dataclass takes no module)
TrainConfig.__doc__ = "The train stage's config: TrainConfigBase and a section per backbone of slim.models.REGISTRY."


RUNTIME_KEYS = ("run_dir", "ray_address", "num_cpus", "strategy", "num_workers", "cpus_per_run", "threads_per_run",
                "use_gpu", "eval_block_users", "tracking")


def stage_config(cfg: TrainConfig) -> dict:
    # amp="none" and no search are left out: run dirs trained before the settings existed stay current
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in RUNTIME_KEYS and not (k == "amp" and v == "none") and not (k == "search" and not v["trials"])}


def run_settings(cfg: TrainConfig) -> RunSettings:
    """What every run of the stage shares beyond its RunSpec: all the fan-out, Ray Train and the search read."""
    return RunSettings(valid_protocol=cfg.valid_protocol, test_protocols=tuple(cfg.test_protocols),
                       max_epochs=cfg.epochs, run_dir=cfg.run_dir, ray_address=cfg.ray_address,
                       num_cpus=cfg.num_cpus, cpus_per_run=cfg.cpus_per_run, threads_per_run=cfg.threads_per_run,
                       tracking=cfg.tracking, strategy=cfg.strategy, num_workers=cfg.num_workers,
                       use_gpu=cfg.use_gpu, amp=cfg.amp, eval_block_users=cfg.eval_block_users)


def user_field(cfg: TrainConfig, variant: str) -> str:
    """The user text a variant fuses: the history control its one vector, slim / slim_teacher the configured
    rationale field, the others none."""
    if variant not in FUSED_USER_VARIANTS:
        return ""
    return "history" if variant == "history_text" else cfg.rationale_field


def specs(cfg: TrainConfig, user_text_dims: Optional[dict] = None) -> list:
    """Every run of the stage. user_text_dims: (variant, field) -> user-text vector width (0 until known)."""
    from slim.models import REGISTRY, VARIANTS

    for b in cfg.backbones:
        if b not in REGISTRY:
            raise ValueError(f"train.backbones: unknown backbone {b!r}; known: {', '.join(REGISTRY)}")
    for v in cfg.variants:
        if v not in VARIANTS:
            raise ValueError(f"train.variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    check(cfg)
    dims = user_text_dims or {}
    common = dict(hidden=cfg.hidden, max_len=cfg.max_len, epochs=cfg.epochs, patience=cfg.patience,
                  batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  num_negatives=cfg.num_negatives, threads=cfg.threads_per_run)
    out = []
    for loss in cfg.losses:
        for v in cfg.variants:
            if v == "text_match":  # ID-agnostic: no backbone, one run per rationale field
                out += [RunSpec("none", v, s, loss=loss, rationale_field=f, user_text_dim=dims.get((v, f), 0),
                                positions=at, **common)
                        for f in cfg.text_match_fields for at in cfg.rationale_positions for s in cfg.seeds]
                continue
            field = user_field(cfg, v)
            fusions = (("concat",) if v in ("id", "text")
                       else [f for f in cfg.text_fusions if not (field and f == "sum")])
            out += [RunSpec(b, v, s, loss=loss, backbone_cfg=dataclasses.asdict(getattr(cfg, b)),
                            rationale_field=field, user_text_dim=dims.get((v, field), 0) if field else 0,
                            text_fusion=f, align_weight=cfg.align_weight, positions=at, **common)
                    for f in fusions for b in cfg.backbones for s in cfg.seeds
                    for at in (cfg.rationale_positions if field else ("after_prefix",))]
    return out


def run_fingerprint(spec, inputs: dict, cfg: TrainConfig) -> str:
    """A run's fingerprint (slim.train.fingerprints) under this config."""
    return spec_fingerprint(dataclasses.asdict(spec), inputs, stage_config(cfg))


def user_texts(cfg: TrainConfig, root: Path, d) -> dict:
    """(variant, field) -> UserText for every run that reads rationales."""
    from slim.recsys import usertext

    lens = np.array([len(s) for s in d.seqs])
    want = {(v, user_field(cfg, v)) for v in cfg.variants if v in FUSED_USER_VARIANTS}
    want |= {("text_match", f) for f in cfg.text_match_fields} if "text_match" in cfg.variants else set()
    by_file = {}  # slim and text_match read the same student file for the same field: once
    for k in sorted(want):
        path = usertext.emb_path(root, *k)
        if path not in by_file:
            by_file[path] = usertext.load(root, d.user_ids, lens, *k)
    return {k: by_file[usertext.emb_path(root, *k)] for k in sorted(want)}


def run(cfg: TrainConfig, force: bool = False) -> Manifest:
    from slim.models import USER_TEXT_VARIANTS
    from slim.recsys import data as recdata
    from slim.recsys import itemtext

    rd = RunDir(cfg.run_dir)
    inputs = {C.DATA_DIR: rd.upstream(C.DATA_DIR)}
    need_text = any(v != "id" for v in cfg.variants)
    text = itemtext.item_text(rd.root, cfg.text_encoder) if need_text else None
    if need_text:
        inputs["item_text"] = itemtext.fingerprint(rd.root, cfg.text_encoder)
    if any(v in USER_TEXT_VARIANTS for v in cfg.variants):
        inputs[C.ENCODE_DIR] = rd.upstream(C.ENCODE_DIR)  # the rationale vectors: a new student run retrains these
    if not force and rd.is_current(STAGE, stage_config(cfg), inputs):
        return rd.read_manifest(STAGE)
    t0 = time.time()
    d = recdata.load(rd.root, cfg.max_users, cfg.subsample_seed)
    uts = user_texts(cfg, rd.root, d)
    all_specs = specs(cfg, {k: ut.vec.shape[1] for k, ut in uts.items()})
    searched, shared, timings = {}, run_settings(cfg), {}
    if cfg.search.trials:  # each group's seed runs take the group's best trial's hyperparameters
        from slim.train.search import tuned

        t_search = time.time()
        all_specs, searched = tuned(all_specs, d, text, uts, rd.root, lambda s: run_fingerprint(s, inputs, cfg),
                                    cfg.search, shared)
        timings["search_s"] = time.time() - t_search  # this run's share: a resumed search's remainder
    todo = []
    for s in all_specs:
        fp = run_fingerprint(s, inputs, cfg)
        if force or not is_done(rd.root / MODELS_DIR / s.name, fp):
            todo.append((s, fp))
    say(f"train: {len(todo)} of {len(all_specs)} runs to do ({cfg.strategy})")
    if todo:
        _train(todo, d, text, uts, rd.root / MODELS_DIR, shared)
    recs = [json.loads((rd.root / MODELS_DIR / s.name / METRICS).read_text()) for s in all_specs]
    missing = {f"{v}/{f}": int((~ut.present).sum()) for (v, f), ut in uts.items()}
    now = {s.name for s, _ in todo}
    trained = sum(r["train_targets"] for r in recs if r["run"] in now)  # next-item targets, every epoch
    total_s = time.time() - t0
    m = Manifest(STAGE, stage_config(cfg), inputs, outputs=[f"{MODELS_DIR}/{s.name}" for s in all_specs],
                 counts={"runs": len(all_specs), "trained_now": len(todo), "users": len(d.seqs)},
                 timings={"total_s": total_s, **timings},
                 extra={"targets_per_s": {r["run"]: r["targets_per_s"] for r in recs},
                        "users_without_rationale": missing, "trained_targets": trained,
                        "rows_per_s": trained / max(total_s, 1e-9), "driver_peak_rss_mb": peak_rss_mb(),
                        **({"search": searched} if searched else {})})
    rd.write_manifest(m)
    _summary(recs, missing)
    say(scale_line(STAGE, trained, "training targets (all runs and epochs)", total_s))
    return m


def _train(todo: list, d, text, uts: dict, models: Path, shared: RunSettings) -> None:
    """The runs of todo ((spec, fingerprint) pairs), each written to models/<run>/: fanned out as Ray tasks, or one
    Ray Train run after another."""
    if shared.strategy == "fanout":
        from slim.train.fanout import fan_out

        fan_out(todo, d, text, uts, models, shared)
        return
    from slim.train.distributed import train_distributed

    prog, tracker = Progress("train", len(todo), "runs"), Tracker(shared.tracking, shared.run_dir)
    for i, (s, fp) in enumerate(todo, 1):
        train_distributed(s, d, text, uts.get((s.variant, s.rationale_field)), models / s.name, fp, shared)
        tracker.train_run(s, json.loads((models / s.name / METRICS).read_text()), models / s.name)
        prog.update(i, f"last {s.name}")
    prog.close()


def _summary(recs: list, missing: dict) -> None:
    """Every run in the stage log; on the console the count and the best run (the table is evaluate's job)."""
    table = [f"{'run':34s} {'epochs':>6s} {'valid N@10':>10s} {'test full N@10':>14s} {'test uni100 N@10':>16s}"]
    for r in recs:
        t = {p: r["test"].get(p, {}).get("NDCG@10", float("nan")) for p in ("full", "uni100")}
        table.append(f"{r['run']:34s} {r['epochs_run']:6d} {r['best_valid_ndcg10']:10.2f} {t['full']:14.2f} "
                     f"{t['uni100']:16.2f}")
    log.info("train runs:\n%s", "\n".join(table))
    full = [(r["test"].get("full", {}).get("NDCG@10", float("nan")), r["run"]) for r in recs]
    top = max((f for f in full if f[0] == f[0]), default=None)  # NaN-free: runs tested on full ranking
    say(f"train: {len(recs):,} runs" + (f"; best test full NDCG@10 {top[0]:.2f} ({top[1]})" if top else ""))
    if missing:
        say("users without a usable rationale (learned missing vector): "
              + ", ".join(f"{k} {v:,}" for k, v in missing.items()))


# The stage's face (slim/runner/face.py): --check, the planner and the manifests read only these.
CONFIG = TrainConfig
WRITES = (STAGE, MODELS_DIR)


def reads(cfg: TrainConfig) -> list[str]:
    from slim.models import USER_TEXT_VARIANTS

    return [C.DATA_DIR] + ([C.ENCODE_DIR] if any(v in USER_TEXT_VARIANTS for v in cfg.variants) else [])


def own_inputs(cfg: TrainConfig, root) -> dict:
    from slim.recsys import itemtext

    return {"item_text": itemtext.fingerprint(root, cfg.text_encoder)} if any(v != "id" for v in cfg.variants) else {}


def check(cfg: TrainConfig) -> None:
    """A constraint on the stage's own config: --check and every job say it before any stage runs, specs() again."""
    from slim.runtime.config import ConfigError

    if cfg.search.trials:
        from slim.train.search_plan import check as check_search

        check_search(cfg.search)
    if cfg.use_gpu and cfg.strategy == "fanout":
        raise ConfigError("train.use_gpu=true needs train.strategy ddp or deepspeed: GPUs are used by Ray "
                          "Train runs, the fanout strategy trains on CPUs")


def resources(cfg: TrainConfig, problems: list) -> list[str]:
    from slim.runtime.preflight import model_line

    lines = [model_line("train.text_encoder", cfg.text_encoder, "", problems)] if any(
        v != "id" for v in cfg.variants) else []
    if cfg.search.trials:
        from slim.train.search_plan import plan_lines

        lines += plan_lines(cfg.search, run_settings(cfg), specs(cfg), MODELS_DIR)
    return lines


def on_force(rd: RunDir) -> bool:
    """--force (slim.runner.stages): every run's done marker goes, weights stay until retrained; the stage then runs as
    a plain one, so a stopped forced train resumes with the plain command. -> the force flag to pass on."""
    models = rd.root / MODELS_DIR
    for p in models.glob(f"*/{METRICS}") if models.is_dir() else []:
        p.unlink(missing_ok=True)
    return False

