"""MLflow tracking of a run directory (`tracking:` in a config, off by default): one MLflow experiment per run
directory; one MLflow run per trained model (its spec as params, loss and validation NDCG@10 per epoch, final
valid/test metrics under every protocol, its model folder as a tag), one for evaluate (the report and plots as
artifacts) and one for the teacher (tokens and cost).

Everything is logged from the driver, after a model or a stage is finished: a train task needs no connection, and
a killed run logs nothing half-done. mlflow is imported only when tracking is on (`pip install 'slim-ray[tracking]'`,
the client alone). Tracking never fails a stage: the first error (server down, mlflow missing) is one warning and
the rest of that stage logs nothing. Credentials come from the environment only (MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_USERNAME / _PASSWORD, read by mlflow itself): a URI carrying user:password@ is refused, and no
environment variable is ever logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from slim.runtime.config import ConfigError

log = logging.getLogger(__name__)

# What mlflow's HTTP client does when the server is down, unless the environment says otherwise: its defaults retry
# for minutes (7 tries, doubling), which would hold a finished run that long before the warning.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
BATCH = 1000  # mlflow's most metrics + params + tags in one log_batch call


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking URI: a server (http://127.0.0.1:5000), a database (sqlite:///runs/x/mlflow.db) or databricks;
    # null = no tracking. Credentials only from the environment (MLFLOW_TRACKING_TOKEN, ..._USERNAME / _PASSWORD)
    mlflow_uri: Optional[str] = None
    experiment: Optional[str] = None  # the MLflow experiment; null = the run directory (its absolute path or URI)

    def __post_init__(self):
        if self.mlflow_uri is not None and "@" in urlsplit(self.mlflow_uri).netloc:
            raise ConfigError("mlflow_uri: carries credentials (user:password@); put them in the environment "
                              "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)")


def experiment_name(cfg: TrackingConfig, run_dir: str) -> str:
    """The run directory's experiment: a local path made absolute (runs/x from two checkouts are two experiments)."""
    from slim.io import storage

    if cfg.experiment:
        return cfg.experiment
    return str(run_dir).rstrip("/") if storage.is_remote(run_dir) else os.path.abspath(run_dir)


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits and _-. /: NDCG@10 -> NDCG10."""
    return name.replace("@", "")


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested params (a spec's backbone_cfg) as dotted keys; mlflow stores params as strings."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class Tracker:
    """One stage's connection to MLflow; every method is a no-op when tracking is off or has failed once."""

    def __init__(self, cfg: Optional[TrackingConfig], run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self.on = bool(cfg and cfg.mlflow_uri)
        self._client, self._experiment = None, None

    def _connect(self):
        if self._client is None:
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.cfg.mlflow_uri)
            name = experiment_name(self.cfg, self.run_dir)
            exp = client.get_experiment_by_name(name)
            self._experiment = exp.experiment_id if exp else client.create_experiment(name)
            self._client = client
        return self._client

    def _guard(self, what: str, fn) -> Optional[Any]:
        """fn(client) -> its result; the first failure is one warning and turns tracking off for this stage."""
        if not self.on:
            return None
        try:
            return fn(self._connect())
        except Exception as e:  # noqa: BLE001 - tracking must never fail a stage, whatever the client raises
            self.on = False
            hint = " (pip install 'slim-ray[tracking]')" if isinstance(e, ImportError) else ""
            log.warning("MLflow tracking at %s off for the rest of this stage: %s failed: %s: %s%s",
                        safe_uri(self.cfg.mlflow_uri), what, type(e).__name__, " ".join(str(e).split())[:300], hint)
            return None

    def _run(self, client, name: str, params: dict, metrics: list, tags: dict) -> str:
        """A finished MLflow run with these params, metrics [(key, value, step)] and tags -> its id."""
        from mlflow.entities import Metric, Param

        run = client.create_run(self._experiment, run_name=name, tags=tags)
        rid, now = run.info.run_id, int(time.time() * 1000)
        items = ([Param(k, v) for k, v in params.items()]  # the tags went with create_run
                 + [Metric(k, float(v), now, int(s)) for k, v, s in metrics if v is not None])
        for i in range(0, len(items), BATCH):
            part = items[i:i + BATCH]
            client.log_batch(rid, metrics=[x for x in part if isinstance(x, Metric)],
                             params=[x for x in part if isinstance(x, Param)])
        return rid

    def train_run(self, spec, rec: dict, model_dir, tags: Optional[dict] = None) -> None:
        """A trained model: spec -> params; loss and valid NDCG@10 per epoch (step = epoch); valid and test under
        every protocol (valid.full.NDCG10, test.uni100.Hit10, ...); the model folder as the tag model_dir.
        tags: more of them (a train.search trial: stage=search_trial, its group and trial index)."""
        def log_it(client):
            params = {**flat(dataclasses.asdict(spec)), "valid_protocol": rec.get("valid_protocol", "")}
            metrics = []
            for h in rec.get("history", []):
                metrics += [("loss", h["loss"], h["epoch"]), ("valid_NDCG10", h["valid_ndcg10"], h["epoch"])]
            for split in ("valid", "test"):
                metrics += [(f"{split}.{p}.{metric_key(k)}", v, 0)
                            for p, ms in rec.get(split, {}).items() for k, v in ms.items()]
            metrics += [(k, rec[k], 0) for k in ("best_epoch", "epochs_run", "best_valid_ndcg10", "targets_per_s",
                                                 "train_seconds", "wall_seconds", "sum_weight") if k in rec]
            rid = self._run(client, rec.get("run", spec.name), params, metrics,
                            {"stage": "train", "model_dir": str(model_dir), "fingerprint": rec.get("fingerprint", ""),
                             **(tags or {})})
            client.set_terminated(rid, "FINISHED")

        self._guard(f"logging train run {spec.name}", log_it)

    def report(self, reports_dir, params: dict) -> None:
        """evaluate: reports/results.md, results.json and plots/ as artifacts of one run named evaluate."""
        from slim.io import storage

        def log_it(client):
            local = storage.local_copy(reports_dir)
            rid = self._run(client, "evaluate", {k: str(v) for k, v in params.items()}, [],
                            {"stage": "evaluate", "reports_dir": str(reports_dir)})
            for name in ("results.md", "results.json"):
                if (local / name).exists():
                    client.log_artifact(rid, str(local / name))
            if (local / "plots").is_dir():
                client.log_artifacts(rid, str(local / "plots"), "plots")
            client.set_terminated(rid, "FINISHED")

        self._guard("logging the evaluate report", log_it)

    def teacher(self, cost: dict) -> None:
        """The teacher's tokens and USD, billed in the run directory so far and in this run, as metrics."""
        def log_it(client):
            this = cost.get("this_run", {})
            metrics = [(k, cost.get(k), 0) for k in ("tokens_in", "tokens_out", "cost_usd", "users", "ok",
                                                     "malformed", "failed")]
            metrics += [(f"this_run.{k}", this.get(k), 0) for k in ("rows", "tokens_in", "tokens_out", "cost_usd")]
            prices = cost.get("prices_usd_per_mtok", {})
            params = {"model": cost.get("model", ""), "mode": cost.get("mode", ""),
                      **{f"price_usd_per_mtok.{k}": str(v) for k, v in prices.items()}}
            metrics = [(k, v, s) for k, v, s in metrics if isinstance(v, (int, float)) and math.isfinite(v)]
            rid = self._run(client, "teacher", params, metrics, {"stage": "teacher"})
            client.set_terminated(rid, "FINISHED")

        self._guard("logging the teacher's tokens and cost", log_it)


def safe_uri(uri: Optional[str]) -> str:
    """The URI as a message may show it: scheme, host and path, no query (a token could ride there)."""
    if not uri:
        return ""
    u = urlsplit(uri)
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path}" if u.scheme else uri
