"""What other packages read of the encode stage: the config its outputs were made with (the serve app encodes a
generated rationale with the same encoder and truncation as the stored vectors)."""

from __future__ import annotations


def recorded_config(run_dir: str):
    """The EncodeConfig recorded in the run's encode/manifest.json (its `config`: the keys EncodeConfig has are
    kept, derived ones dropped), with run_dir; the defaults where the stage has not run. A bad value is a
    ConfigError naming the key."""
    import dataclasses

    from slim.encode.settings import EncodeConfig
    from slim.io import columns as C
    from slim.io.rundir import RunDir
    from slim.runtime import config

    m = RunDir(run_dir).read_manifest(C.ENCODE_DIR)
    names = {f.name for f in dataclasses.fields(EncodeConfig)}
    raw = {k: v for k, v in (m.config if m else {}).items() if k in names}
    return config.build(EncodeConfig, {**raw, "run_dir": run_dir}, "encode (encode/manifest.json)")
