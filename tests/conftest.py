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


# The serve tests' Serve instance, shared by every module that asks for it (tests/support/serve_app.py). Session-scoped so
# that two modules share one, and shut down right after the last test that uses it, so that the tests after them
# run without it (pytest would otherwise keep it until the session ends).
_SERVE = {"last": None, "close": lambda: None}


def pytest_collection_finish(session):
    users = [it.nodeid for it in session.items if "serve_app" in getattr(it, "fixturenames", ())]
    _SERVE["last"] = users[-1] if users else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # after the module fixtures' own teardown (an extra app a module added is deleted first)
    if item.nodeid == _SERVE["last"]:
        _SERVE["close"]()


@pytest.fixture(scope="session")
def serve_app(tmp_path_factory, ray_local):
    """One Serve instance with the `open`, `auth` and `slim` apps over a trained run directory (tests/support/serve_app.py)."""
    from tests.support.serve_app import running

    apps = running(tmp_path_factory.mktemp("serve"))
    app = next(apps)
    _SERVE["close"] = lambda: next(apps, None)  # the generator's end: serve.shutdown(); a second call does nothing
    yield app
    _SERVE["close"]()
