"""distill.refresh: whether a new snapshot retrains the adapter or keeps the one already trained (README, "Refreshing
a run"; docs/refresh.md). Kept, the adapter's fingerprint stays, so the student stage's rows of unchanged users keep
their keys and are reused; the student learns nothing from the new teacher rows."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir, fingerprint
from slim.runtime.console import say


def keep(cfg, rd: RunDir, scfg: dict, inputs: dict) -> Optional[Manifest]:  # cfg: a DistillConfig
    """The adapter already there, when training again would be for nothing but a new snapshot and distill.refresh is
    keep (or it was trained on this very snapshot: only `refresh` changed). Its manifest then has this snapshot's
    inputs and config (the stage is current) and says what it was trained on. None: train."""
    prev = rd.read_manifest(C.DISTILL_DIR)
    if prev is None or not (rd.path(C.STUDENT_ADAPTER) / "adapter_config.json").exists():
        return None
    if fingerprint({**prev.config, "refresh": None}) != fingerprint({**scfg, "refresh": None}):
        return None  # other settings: a different adapter
    trained_on = prev.extra.get("trained_on") or {"inputs": prev.inputs, "created": prev.created}
    same = fingerprint(trained_on["inputs"]) == fingerprint(inputs)
    if cfg.refresh != "keep" and not same:
        return None
    m = dataclasses.replace(prev, config=scfg, inputs=inputs, created=time.time(),
                            extra={**prev.extra, "refresh": "trained" if same else "kept", "trained_on": trained_on})
    rd.write_manifest(m)
    if not same:
        say(f"distill: refresh=keep: the adapter trained on the snapshot of "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(trained_on['created']))} UTC is kept, not retrained on "
            "this one's teacher rows (distill.refresh=retrain trains on them)")
    return m
