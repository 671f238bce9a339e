"""The train stage's runs as Ray tasks: one task per run, each fitting (slim.train.loop) and saving its model
(slim.recsys.checkpoint) straight to the run directory, local or a bucket; the driver only collects metrics."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from slim.io import storage
from slim.recsys.checkpoint import save_run
from slim.runtime.tracking import Tracker
from slim.train.progress import POLL_S, EpochBoard, close, drain, epoch_queue, report
from slim.train.settings import RunSettings

log = logging.getLogger(__name__)


def _progress(queue, r: dict) -> None:
    # print, not logging: a Ray worker has no log handler, while its stdout reaches the driver, which writes it to
    # the stage log (slim.runtime.console; the console too with --verbose); the queue feeds the console line
    report(queue, r)
    print(f"[train] {r['run']} epoch {r['epoch']}: loss {r['loss']:.4f}, valid NDCG@10 {r['valid_ndcg10']:.2f} "
          f"({r['seconds']:.1f}s, of which validation {r.get('valid_s', 0.0):.1f}s)", flush=True)


def _fit_and_save(spec, d, text, uts: dict, out: str, fp: str, shared: RunSettings, queue=None) -> dict:
    from slim.train.loop import fit

    t0 = time.time()
    model, rec = fit(spec, d, text, shared.valid_protocol, shared.test_protocols, progress=partial(_progress, queue),
                     ut=uts.get((spec.variant, spec.rationale_field)))
    rec["wall_seconds"] = time.time() - t0
    return save_run(storage.path(out), model, spec, d.num_items, rec, fp)  # a bucket: straight from this task


def fan_out(todo: list, d, text, uts: dict, models: Path, shared: RunSettings) -> list:
    """One Ray task per (spec, fingerprint) in todo, each writing models/<run>/; returns their metric records as
    they finish."""
    import ray

    from slim.runtime.raycluster import cores_request, init_ray

    init_ray(shared.ray_address, shared.num_cpus)
    # cores_request: at most cores // threads_per_run runs at once on the local cluster (it declares 2 x cores CPUs)
    task = ray.remote(num_cpus=shared.cpus_per_run, resources=cores_request(shared.threads_per_run),
                      max_retries=1)(_fit_and_save)
    refs = [ray.put(x) for x in (d, text, uts)]  # shared once through the object store, not per task
    queue = epoch_queue()
    pending = {task.remote(s, *refs, str(models / s.name), fp, shared, queue): s for s, fp in todo}
    out, t0 = [], time.time()
    board = EpochBoard([s.name for s, _ in todo], shared.max_epochs)
    tracker = Tracker(shared.tracking, shared.run_dir)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for r in drain(queue):  # every epoch reported meanwhile: the console line
                board.epoch(r)
            if not ready:
                continue
            spec = pending.pop(ready[0])
            rec = ray.get(ready[0])
            out.append(rec)
            tracker.train_run(spec, rec, models / spec.name)  # from the driver: the task needs no MLflow connection
            log.info("[%d/%d runs, %.0fs] %s: %d epochs, test full NDCG@10 %.2f, uni100 %.2f (%.0f targets/s)",
                     len(out), len(todo), time.time() - t0, spec.name, rec["epochs_run"],
                     rec["test"].get("full", {}).get("NDCG@10", float("nan")),
                     rec["test"].get("uni100", {}).get("NDCG@10", float("nan")), rec["targets_per_s"])
            board.finished(spec.name, rec["epochs_run"])
    finally:
        board.close()
        close(queue)
    return out
