"""A trained run's fingerprint (what its metrics.json records, so a rerun redoes a stale run and skips a current one),
from its spec as saved with its weights and the stage config as its manifest records it; and the migration that
recomputes it for runs whose inputs were renamed, not changed (slim.runner.migrate, slim.runner.upgrade)."""

from __future__ import annotations

import json

from slim.io import columns as C
from slim.io import storage
from slim.io.rundir import fingerprint
from slim.recsys.checkpoint import METRICS, read_checkpoint


def spec_fingerprint(d: dict, inputs: dict, conf: dict) -> str:
    """What a trained run depends on, from its spec as saved with its weights (d) and the stage's config as its
    manifest records it (conf): `jobs/migrate.py` recomputes it for runs trained before a rename of their inputs."""
    d = {k: v for k, v in d.items() if k != "threads"}
    if d["positions"] == "after_prefix":  # the default before the setting existed: those runs stay current
        d.pop("positions")
    if d["variant"] == "id":  # an id run depends on no text: item text and rationales are left out
        inputs = {k: v for k, v in inputs.items() if k not in ("item_text", C.ENCODE_DIR)}
    elif not d["rationale_field"]:  # id_text / text: the item vectors, not the rationales
        inputs = {k: v for k, v in inputs.items() if k != C.ENCODE_DIR}
    amp = {"amp": conf["amp"]} if conf.get("amp", "none") != "none" else {}  # fp32 runs keep their fingerprint
    draw = {"draw": "raw-id hash"} if conf["max_users"] else {}  # subsamples drawn by position are not current
    return fingerprint({"spec": d, "inputs": inputs, "max_users": conf["max_users"],
                        "subsample_seed": conf["subsample_seed"], "valid": conf["valid_protocol"],
                        "test": list(conf["test_protocols"]), "encoder": conf["text_encoder"], **amp, **draw})


def refingerprint(root, runs: list, inputs: dict, conf: dict) -> int:
    """Finished runs whose inputs were renamed, not changed (slim.runner.migrate): each run's fingerprint recomputed
    from the spec saved with its weights; weights and metrics stay. runs: the train manifest's outputs. -> runs
    done."""
    from slim.io import atomic

    done = 0
    for rel in runs:
        out = storage.path(root) / rel
        if not (out / METRICS).exists():
            continue
        spec = read_checkpoint(out)["spec"]
        rec = json.loads((out / METRICS).read_text())
        atomic.write_json(out / METRICS, {**rec, "fingerprint": spec_fingerprint(spec, inputs, conf)})
        done += 1
    return done
