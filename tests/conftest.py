import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "amazon2018-games")


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray cluster for the whole test session (starting one costs ~10 s)."""
    from slim.runtime.raycluster import init_ray

    import ray

    init_ray(None, num_cpus=6)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Shared download/model cache, so the recbole wheel is fetched once per session."""
    d = os.environ.get("SLIM_TEST_CACHE") or os.path.expanduser("~/.cache/slim")
    os.makedirs(d, exist_ok=True)
    return d
