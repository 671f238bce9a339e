"""What other packages use of the student stage (the serve app writes a new user's rationale the way this stage
wrote the stored ones): the config a run's student wrote with, the model it wrote with, and its rule for turning
an engine's text into a rationale row. Nothing else of the package is theirs to call."""

from __future__ import annotations

import dataclasses

from slim.student.engines import StudentModelError, engine_args, resolve_model, sampling_dict

__all__ = ["StudentModelError", "engine_args", "rationale_row", "recorded_config", "resolve_model", "sampling_dict"]


def recorded_config(run_dir: str, overrides: dict, sampling: dict):
    """The StudentConfig the run's student stage recorded (student/manifest.json; its defaults where the run has
    none) with `overrides` (top-level keys) and `sampling` (SamplingConfig keys) applied; a bad value is a
    ConfigError naming the key."""
    from slim.io.rundir import RunDir
    from slim.runtime import config
    from slim.student.stage import STAGE, StudentConfig

    m = RunDir(run_dir).read_manifest(STAGE)
    names = {f.name for f in dataclasses.fields(StudentConfig)}
    # manifests also record derived keys (history_cut) and leave out runtime ones: only the config's own are kept
    raw = {k: v for k, v in (m.config if m else {}).items() if k in names}
    cfg = config.build(StudentConfig, {**raw, **overrides, "run_dir": run_dir},
                       "student (student/manifest.json + serve.generator)")
    return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, **sampling))


def rationale_row(prompt: str, text: str, prompt_tokens: int, generated_tokens: int, model: str) -> dict:
    """One generated text -> the stage's rationale row (steps parsed; status ok | malformed), as it would store it."""
    import pyarrow as pa

    from slim.io import columns as C
    from slim.student.stage import finalize

    batch = pa.table({C.USER_ID: [-1], C.PROMPT: [prompt], "generated_text": [text], "gen_error": [""],
                      "num_input_tokens": [prompt_tokens], "num_generated_tokens": [generated_tokens]})
    return finalize(batch, model).to_pylist()[0]
