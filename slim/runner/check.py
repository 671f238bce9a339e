"""Checks made before any work starts: constraints across stages, and the plan `jobs/pipeline.py --check` prints.

`validate(cfgs, wanted)` raises ConfigError for a combination of sections that cannot work. `plan(cfgs, wanted,
force)` resolves models and input paths and says per stage whether it would run or be skipped, from the manifests
already in the run directory; it starts no Ray and writes nothing there (content hashes of copied files are
cached under SLIM_SCRATCH). Everything a stage knows about itself (what it reads, fingerprints and needs) comes from
its face (slim/runner/face.py); only constraints between stages live here.
"""

from __future__ import annotations

import json
import os
from typing import Any

from slim.io import columns as C
from slim.runtime.config import ConfigError
from slim.io.rundir import RunDir, accept_old_forms, fingerprint


def validate(cfgs: dict, wanted: list[str]) -> None:
    """Constraints between sections (and on the run directory) for the stages about to run."""
    from slim.runner.migrate import refuse_old_layout

    _submitted_run_dir(cfgs, wanted)
    for run_dir in dict.fromkeys(str(getattr(cfgs[n], "run_dir", "")) for n in wanted if n in cfgs):
        if run_dir:
            refuse_old_layout(run_dir)  # a run directory from before 0.2: migrate it first
    from slim.runner import stages

    for name in (n for n in stages.names() if n in wanted and n in cfgs):
        stages.face(name).check(cfgs[name])  # a constraint on the stage's own config
    # constraints between stages
    data, sampled = cfgs.get("data"), []
    if "train" in wanted:
        t = cfgs["train"]
        sampled += [f"train.valid_protocol={t.valid_protocol}"] if t.valid_protocol in C.PROTOCOLS else []
        sampled += [f"train.test_protocols={p}" for p in t.test_protocols if p in C.PROTOCOLS]
    if "evaluate" in wanted:
        sampled += [f"evaluate.protocols={p}" for p in cfgs["evaluate"].protocols if p in C.PROTOCOLS]
    if data is not None and data.num_negatives != C.NUM_NEGATIVES and sampled:
        raise ConfigError(f"data.num_negatives={data.num_negatives}, but {sampled[0]} is scored and reported (chance "
                          f"level included) as {C.NUM_NEGATIVES} negatives per target; keep data.num_negatives="
                          f"{C.NUM_NEGATIVES} or score full ranking only")
    student, distill = cfgs.get("student"), cfgs.get("distill")
    if ("student" in wanted and student is not None and distill is not None and student.adapter == "auto"
            and not distill.merge and student.base_model != distill.base_model):
        raise ConfigError(f"student.base_model={student.base_model!r} but the LoRA adapter it loads "
                          f"(student.adapter=auto) is trained on distill.base_model={distill.base_model!r}; "
                          "set both to the same model")


def _submitted_run_dir(cfgs: dict, wanted: list[str]) -> None:
    """Under `ray job submit` the driver runs in a temporary copy of the working directory (a new one whenever the
    code changes), so a relative run_dir would put the outputs there, lost to the user and to a resubmission."""
    from slim.runtime.raycluster import submitted_job

    if not submitted_job():
        return
    for name in wanted:
        run_dir = str(getattr(cfgs[name], "run_dir", ""))
        if run_dir and "://" not in run_dir and not os.path.isabs(run_dir):
            raise ConfigError(f"{name}.run_dir {run_dir!r} is relative: a submitted job runs in a temporary copy of "
                              "the working directory; give an absolute path every node sees, e.g. "
                              "run_dir=/shared/runs/games")


def depends(name: str, cfg: Any) -> list[str]:
    """Upstream pipeline stages whose output `name` reads (the stage's face says)."""
    from slim.runner import stages

    return stages.face(name).reads(cfg)


def _why_run(name: str, cfg: Any, rd: RunDir, running: dict, forced: bool) -> str:
    """'' when the stage's manifest matches its config and inputs, else the reason it would run."""
    from slim.runner import stages

    face = stages.face(name)
    if forced:
        return "--force"
    if getattr(cfg, "dry_run", False):
        return f"{name}.dry_run: estimates tokens and cost, sends nothing"
    m = rd.read_manifest(face.STAGE)  # each stage writes its manifest in the folder of its name
    ups = depends(name, cfg) + [k for k in (m.inputs if m else {}) if k in C.STAGE_DIRS]
    after = [u for u in dict.fromkeys(ups) if u in running]
    if after:
        return f"after {', '.join(after)}"
    if m is None:
        return "no manifest yet"
    now = json.loads(json.dumps(face.stage_config(cfg), default=str))
    changed = sorted(k for k in set(now) | set(m.config) if fingerprint(now.get(k)) != fingerprint(m.config.get(k)))
    if changed:
        return "config changed: " + ", ".join(f"{name}.{k}" for k in changed)
    inputs = {u: rd.upstream(u) for u in m.inputs if u in C.STAGE_DIRS and rd.read_manifest(u) is not None}
    inputs.update(face.own_inputs(cfg, rd.root))
    inputs = accept_old_forms(m.inputs, inputs)  # a run directory made before content fingerprints
    stale = sorted(k for k in set(inputs) | set(m.inputs) if inputs.get(k, "?") != m.inputs.get(k))
    if stale:
        return "inputs changed: " + ", ".join(stale)
    if getattr(cfg, "retry_failed", False) and m.counts.get("failed", 0):
        return f"retries {m.counts['failed']} failed row(s)"
    return ""


def plan(cfgs: dict, wanted: list[str], force: list[str], chosen_by: str = "--stages") -> tuple[list[str], list[str]]:
    """-> (lines to print, problems). Stages are visited in pipeline order; a stage after one that runs runs.
    chosen_by: what selected `wanted` (--stages or the config's stages:), named beside the stages left out."""
    from slim.runner import stages

    lines, problems, running = [], [], {}
    for name in (n for n in stages.names() if n in cfgs):
        cfg = cfgs[name]
        if name not in wanted:
            lines.append(f"{name:9s} -         not selected ({chosen_by}): not checked, not run")
            continue
        if name in stages.ON_DEMAND:  # no manifest: it runs whenever named
            lines.append(f"{name:9s} {'RUN':9s} {stages.face(name).plan_line(cfg, wanted, problems)}")
            continue
        rd = RunDir(cfg.run_dir)
        for up in depends(name, cfg):
            if up not in wanted and rd.read_manifest(up) is None:
                problems.append(f"{name} reads the output of {up}, which has not finished in {rd.root} "
                                f"(no {up}/{C.MANIFEST}) and is not in {chosen_by}")
        try:
            why = _why_run(name, cfg, rd, running, name in force)  # force: names (pipeline expands --force alone)
        except Exception as e:  # noqa: BLE001 - a missing input is a problem to list, not a crash of --check
            problems.append(f"{name}: {e}")
            why = f"cannot tell ({type(e).__name__})"
        if why:
            running[name] = why
        lines.append(f"{name:9s} {'RUN ' if why else 'skip':9s} {why or 'manifest matches config and inputs'}")
        lines += [f"{'':20s}{r}" for r in stages.face(name).resources(cfg, problems)]
    return lines, problems
