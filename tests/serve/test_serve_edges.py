"""Small leaks of the Serve app (issue 42), over real HTTP on the session's Serve instance (tests/support/serve_app.py):
/healthz shows what is served only to a caller with the token, errors echo at most a short piece of what was sent,
and an integer too long to read is a 4xx naming its field."""

import pytest

from slim.serve import ServeConfig
from tests.support.serve_app import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def roomy(serve_app):
    """The open app's run with room for a body longer than Python reads as one integer (4,300 digits; the shared
    apps refuse bodies over 4,096 bytes first): one more app on the same Serve instance, deleted afterwards."""
    from ray import serve

    from slim.serve.app import build

    serve.run(build(ServeConfig(**{**serve_app["base"], "max_body_bytes": 65536})), name="roomy",
              route_prefix="/roomy")
    yield serve_app["client"]
    serve.delete("roomy")


def test_healthz_without_the_token_says_only_ok(serve_app):
    c = serve_app["client"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):  # none, wrong, no scheme
        r = c.get("/auth/healthz", headers=headers)
        assert (r.status_code, r.json()) == (200, {"status": "ok"}), headers
        assert serve_app["best"] not in r.text and "pid" not in r.text
    full = c.get("/auth/healthz", headers=AUTH).json()
    assert full["status"] == "ok" and full["run"] == serve_app["best"] and full["pid"] > 0 and full["auth"] is True
    # no token configured: the API is open, and /healthz says what it serves (the benchmarks read its pid)
    assert c.get("/healthz").json()["run"] == serve_app["best"]


def test_errors_echo_at_most_a_short_piece_of_the_input(roomy):
    c = roomy
    title = "Unknown title " + "x" * 60_000
    for path, body, field in (("/roomy/recommend", {"history": [title]}, "history[0]"),
                              ("/roomy/score", {"history": [1], "candidates": [10 ** 4000]}, "candidates[0]"),
                              ("/roomy/recommend", {"user_id": -(10 ** 4000)}, "user_id")):
        r = c.post(path, json=body)
        assert r.status_code in (404, 422) and r.json()["field"] == field, r.text[:300]
        assert len(r.text) < 400 and "characters)" in r.json()["error"], r.text[:300]
    assert "Unknown title xxx" in c.post("/roomy/recommend", json={"history": [title]}).json()["error"]
    short = c.post("/roomy/recommend", json={"history": ["Unknown title"]}).json()["error"]
    assert "'Unknown title'" in short and "characters)" not in short  # a short value is shown whole
    r = c.get(f"/roomy/items/{10 ** 4000}")
    assert r.status_code in (404, 422) and len(r.text) < 400


def test_an_integer_too_long_to_read_is_named_by_field(roomy):
    c, big = roomy, "9" * 5000
    for path, raw, field in (("/roomy/recommend", f'{{"history": [1, 2, {big}], "k": 3}}', "history[2]"),
                             ("/roomy/recommend", f'{{"history": [1], "k": {big}}}', "k"),
                             ("/roomy/recommend", f'{{"user_id": -{big}}}', "user_id"),
                             ("/roomy/score", f'{{"history": [1], "candidates": [3, {big}]}}', "candidates[1]")):
        r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["field"]) == (422, field), r.text[:300]
        assert "5,000 digits" in r.json()["error"] and "ValueError" not in r.text and len(r.text) < 300
    # the longest integer Python reads is an ordinary (unknown) id, not this error
    r = c.post("/roomy/recommend", json={"history": [int("9" * 4300)]})
    assert (r.status_code, r.json()["field"]) == (422, "history[0]") and "unknown item id" in r.json()["error"]
    assert c.post("/roomy/recommend", json={"history": [1, 2], "k": 3}).status_code == 200
