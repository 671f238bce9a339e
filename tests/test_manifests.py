"""The cluster files checked offline: KubeRay manifests against the v1 CRD schemas in ../shared/kuberay-crds/
(strict about unknown fields, as `kubectl apply`'s server-side field validation is), the RayJob's entrypoint and
runtime_env against this code, the Serve config against Ray Serve's schema, the cluster-launcher YAML through the
checks `ray up` makes before it contacts the cloud, and no secret value in any of them."""

import copy
import functools
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# ../shared next to the repository, as conftest.SHARED; SLIM_SHARED points elsewhere (a worktree's checkout)
CRDS = Path(os.environ.get("SLIM_SHARED") or Path(__file__).parents[2] / "shared", "kuberay-crds").resolve()
KUBERAY = ROOT / "cluster" / "kuberay"
FILES = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "RayService": "rayservice.yaml"}
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.I)  # OPENAI_API_KEY, HF_TOKEN; not TOKENIZERS_...


def strict(schema: dict) -> dict:
    """The CRD's schema with unknown fields refused: objects that list their properties and do not preserve
    unknown fields get additionalProperties: false (the API server prunes or, under strict validation, rejects
    them; a typo in a field name would otherwise pass silently)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


@functools.lru_cache(maxsize=None)
def validator(kind: str):
    import jsonschema

    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (../shared/kuberay-crds next to the repository, or "
                    "$SLIM_SHARED/kuberay-crds): the manifests were NOT validated")
    crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"])), f"{crd['spec']['group']}/v1"


def errors(kind: str, doc: dict) -> list[str]:
    v, api = validator(kind)
    out = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]
    if doc.get("apiVersion") != api or doc.get("kind") != kind:
        out.append(f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')}, want {api}/{kind}")
    return out


@pytest.mark.parametrize("kind", sorted(FILES))
def test_manifest_matches_the_crd(kind):
    doc = yaml.safe_load((KUBERAY / FILES[kind]).read_text())
    assert errors(kind, doc) == []
    bad = copy.deepcopy(doc)  # the check is not vacuous: a misspelt field and a wrong type are caught
    bad["spec"]["suspendd"], bad["spec"]["suspend"] = True, "yes"
    found = errors(kind, bad)
    assert any("suspendd" in e for e in found) and any(e.startswith("spec.suspend: 'yes'") for e in found), found


def test_rayjob_lifecycle_and_entrypoint():
    from slim import config, stages
    from ray._private.runtime_env.validation import parse_and_validate_excludes

    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0 and job["jobId"]
    # the cluster it creates is the documented RayCluster
    assert job["rayClusterSpec"] == yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"] and (ROOT / argv[1]).exists()
    i = argv.index("--config")
    cfgs = stages.load_all(config.load_raw(str(ROOT / argv[i + 1]), argv[i + 2:]))  # every override is a real key
    assert os.path.isabs(cfgs["train"].run_dir) and cfgs["distill"].use_gpu
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert set(env) <= {"working_dir", "py_modules", "excludes", "env_vars"}
    assert env["py_modules"] == [env["working_dir"] + "/slim"]  # the image's copy of this repository
    parse_and_validate_excludes(env["excludes"])


SERVE_CONFIGS = {"rayservice.yaml": lambda: yaml.safe_load(yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
                                                               ["spec"]["serveConfigV2"]),
                 "serve_deploy.yaml": lambda: yaml.safe_load((ROOT / "cluster" / "serve_deploy.yaml").read_text())}


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_parses(name, monkeypatch):
    """Ray Serve's schema accepts the file, its import path resolves to the builder, and the builder turns the
    file's args into the ServeConfig they name (an unknown or mistyped key is a ConfigError here, not on the
    cluster); only the last step, which needs a trained run, is left out."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from slim.serve import app as serve_app
    from slim.serve import settings

    cfg = ServeDeploySchema.parse_obj(SERVE_CONFIGS[name]())
    assert [a.name for a in cfg.applications] == ["slim"]
    application = cfg.applications[0]
    module, attr = application.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    built = []
    monkeypatch.setattr(serve_app, "build", built.append)  # the builder's config, not the deployment
    monkeypatch.chdir(ROOT)  # `config:` paths are relative to where `serve deploy` runs
    builder(dict(application.args))
    (serve,) = built
    assert isinstance(serve, settings.ServeConfig)
    settings.check(serve)
    for key, value in application.args.items():
        if key.startswith("serve."):
            assert getattr(serve, key.removeprefix("serve.")) == value, key
    if "run_dir" in application.args:
        assert serve.run_dir == application.args["run_dir"]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_secrets_come_from_kubernetes_secrets():
    for f in FILES.values():
        doc = yaml.safe_load((KUBERAY / f).read_text())
        envs = [d for d in _walk(doc) if "name" in d and ("value" in d or "valueFrom" in d)]
        secret = [d for d in envs if SECRET_NAME.search(d["name"])]
        for d in secret:
            assert "value" not in d and "secretKeyRef" in d["valueFrom"], (f, d)
        if f != "rayservice.yaml":
            assert {d["name"] for d in secret} >= {"OPENAI_API_KEY"}, f
        embedded = [yaml.safe_load(s) for s in (doc["spec"].get("runtimeEnvYAML"), doc["spec"].get("serveConfigV2"))
                    if s]
        for e in embedded:
            for d in _walk(e):
                assert not any(SECRET_NAME.search(k) for k in d.get("env_vars", {})), (f, d)


def test_launcher_yaml_passes_ray_up_checks():
    """`ray up` has no dry run; these are the config checks it makes before calling the cloud (defaults filled in,
    then Ray's cluster-config JSON schema, ray/autoscaler/ray-schema.json)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "launcher-aws-gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert types["gpu"]["resources"]["GPU"] >= 1 and types["gpu"]["min_workers"] < types["gpu"]["max_workers"]
    text = (ROOT / "cluster" / "launcher-aws-gpu.yaml").read_text()  # the key is fetched on the node, never written
    assert not re.search(r"sk-[A-Za-z0-9]{16,}", text) and "OPENAI_API_KEY=\"$(aws secretsmanager" in text
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu"]["max_wrokers"] = 8
    with pytest.raises(Exception, match="max_wrokers"):
        validate_config(prepare_config(bad))


def test_pip_runtime_env_follows_pyproject():
    """cluster/runtime_env_pip.yaml installs pyproject's dependencies and `gpu` extra, less ray and torch."""
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = [d for d in proj["dependencies"] + proj["optional-dependencies"]["gpu"]
            if not d.startswith(("ray[", "ray=", "torch"))]
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env_pip.yaml").read_text())
    assert sorted(env["pip"]["packages"]) == sorted(want)
    for f in ("runtime_env.yaml", "runtime_env_pip.yaml"):
        env = yaml.safe_load((ROOT / "cluster" / f).read_text())
        assert env["py_modules"] == ["slim"] and (ROOT / "slim" / "__init__.py").exists()
