"""The encode stage's actor pool: the Ray Data `map_batches` arguments that run the sentence encoder
(slim.text.encoder.Encoder, wrapped by slim.encode.keyed.KeyedEncoder) in `encode.num_actors` actors."""

from __future__ import annotations

from slim.encode.settings import EncodeConfig
from slim.runtime.threads import actor_threads


def pool(cfg: EncodeConfig, fields: tuple, item_vecs: str = "") -> dict:
    """map_batches keyword arguments for an actor pool encoding `fields`; item_vecs (the items' vectors) turns on
    step 3's catalogue grounding when encode.ground_threshold > 0."""
    import ray

    from slim.runtime.llm_models import resolve_encoder
    from slim.runtime.raycluster import work_actor_env

    return dict(
        batch_size=cfg.batch_size, batch_format="numpy", num_cpus=cfg.actor_cpus,
        num_gpus=cfg.num_gpus_per_actor or None, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        runtime_env=work_actor_env(),  # the encoder at the driver's priority: see slim.runtime.raycluster
        fn_constructor_kwargs={"model_path": resolve_encoder(cfg.model), "fields": fields,
                               "max_seq_length": cfg.max_seq_length, "step3_share": cfg.step3_share,
                               # the count the stores' vector key names (slim.encode.store.vector_key)
                               "threads": actor_threads(cfg.threads, cfg.actor_cpus),
                               "device": "cuda" if cfg.num_gpus_per_actor else "cpu",
                               "item_vecs": item_vecs if cfg.ground_threshold > 0 else "",
                               "ground_threshold": cfg.ground_threshold},
    )
