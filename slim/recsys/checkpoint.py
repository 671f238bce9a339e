"""A trained run on disk: models/<run>/{model.pt, metrics.json}. Weights are written first and metrics.json last
(atomically), so a run with metrics.json is complete; the fingerprint in it says whether it is still current.
Its own module so the train stage (job), the Ray Train loop (distributed) and the readers (evaluate, explain,
serve) share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from slim.io.columns import METRICS_FILE as METRICS

WEIGHTS = "model.pt"


def is_done(out: Path, fp: str) -> bool:
    p = out / METRICS
    return p.exists() and json.loads(p.read_text()).get("fingerprint") == fp


def save_run(out: Path, model, spec, num_items: int, rec: dict, fp: str) -> dict:
    """Weights first, metrics.json last (atomic): a run with metrics.json is complete."""
    import torch

    from slim.io import atomic

    with atomic.writing(out / WEIGHTS) as tmp:
        torch.save({"spec": dataclasses.asdict(spec), "num_items": num_items, "state_dict": model.state_dict()}, tmp)
    rec = {**rec, "fingerprint": fp}
    atomic.write_json(out / METRICS, rec)
    return rec


def read_checkpoint(path: str | Path) -> dict:
    """A saved run's model.pt (local or in a bucket): {spec (a RunSpec as a dict), num_items, state_dict}."""
    import io

    import torch

    from slim.io import storage

    with storage.open_input(storage.path(path) / WEIGHTS) as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)


def load_model(path: str | Path, item_text: Optional[np.ndarray] = None):
    """A saved run -> (model, RunSpec), rebuilt from the checkpoint alone: the item-text buffer, the rationale
    width and field are saved with the weights."""
    from slim.recsys.spec import RunSpec, build_model

    ck = read_checkpoint(path)
    spec = RunSpec(**ck["spec"])
    sd = ck["state_dict"]
    key = next((k for k in sd if k == "text" or k.endswith("items.text")), None)  # None: an ID table only (init)
    if key is not None and item_text is None:  # shape placeholder; load_state_dict fills the values
        item_text = np.zeros(tuple(sd[key].shape), dtype=np.float32)
    model = build_model(spec, ck["num_items"], item_text)
    model.load_state_dict(sd)
    return model.eval(), spec
