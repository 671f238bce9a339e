"""Money safety (issue 29): a paid teacher needs prices, a config without a teacher section reaches no API, and
teacher.max_cost_usd stops the stage before the provider's bill (the fault server's) would exceed it."""

import json
import os
import random
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest

from slim.io import columns as C
from slim.runtime.config import ConfigError
from slim.teacher import budget, shards
from slim.teacher import stage as job
from slim.teacher import client as K
from slim.testing import fault_server
from slim.testing.rundata import write_data_stage

ROOT = Path(__file__).resolve().parents[2]
PRICE_IN, PRICE_OUT = 1.0, 4.0  # USD per million tokens


def _billed_usd(url) -> float:
    """What the provider billed: every 200 it sent, at its own usage figures."""
    stats = json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())
    return sum((tin * PRICE_IN + tout * PRICE_OUT) / 1e6 for _, _, tin, tout in stats["billed"])


def _billed_users(url) -> set[int]:
    stats = json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())
    return {int(u) for u, _, _, _ in stats["billed"]}


def _faults(url) -> dict[int, list[str]]:
    """Each user's faults, request by request ("" for a normal answer)."""
    out: dict[int, list[str]] = {}
    for _, u, fault in json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())["requests"]:
        out.setdefault(int(u), []).append(fault)
    return out


def _requests(url) -> list[int]:
    stats = json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())
    return [int(u) for _, u, _ in stats["requests"]]


@pytest.mark.parametrize("kw,problem", [
    (dict(base_url="https://api.example.com/v1"), "teacher.price_in_per_mtok / teacher.price_out_per_mtok"),
    (dict(base_url="https://api.example.com/v1", price_in_per_mtok=0.15), "teacher.price_in_per_mtok"),
    (dict(base_url="https://api.example.com/v1", price_unknown_ok=True), None),
    (dict(base_url="https://api.example.com/v1", price_in_per_mtok=0.15, price_out_per_mtok=0.6), None),
    (dict(base_url="http://127.0.0.1:8000/v1"), None),  # a server on this machine costs nothing
    (dict(base_url="http://localhost:8000/v1"), None),
    (dict(local_server=True), None),
    (dict(), "teacher: no endpoint"),  # the defaults: no API at all
    (dict(local_server=True, max_cost_usd=0.0), "teacher.max_cost_usd: must be > 0"),
])
def test_paid_teacher_needs_prices_or_an_explicit_ok(kw, problem):
    cfg = job.TeacherConfig(**kw)
    if problem is None:
        budget.check(cfg)
    else:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            budget.check(cfg)


def test_budget_refuses_what_does_not_fit():
    b = budget.Budget(1.0, spent_usd=0.25)
    assert b.take(0.5) and not b.take(0.5) and b.spent == pytest.approx(0.75)
    b.give(0.3)  # that request cost 0.2 of its 0.5
    assert b.take(0.5) and b.stats() == {"spent_usd": pytest.approx(0.95), "refused": 1}
    assert budget.Budget(None).take(1e9)  # null: no ceiling


def test_config_without_teacher_section_reaches_no_api(tmp_path):
    """configs/games_fusion.yaml has no teacher section (and its `stages:` leave the teacher out): with a key in
    the environment, the teacher job and a --check that names the teacher stop with one line before any request
    (RAY_ADDRESS points nowhere: starting work would fail loudly)."""
    assert "teacher" not in __import__("yaml").safe_load((ROOT / "configs/games_fusion.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "OPENAI_API_KEY": "sk-test",
           "RAY_ADDRESS": "127.0.0.1:9"}
    for args in (["jobs/teacher.py"], ["jobs/pipeline.py", "--check", "--stages", "data,teacher"]):
        r = subprocess.run([sys.executable, *args, "--config", "configs/games_fusion.yaml", f"run_dir={tmp_path}",
                            f"data.path={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith("config error: teacher: no endpoint"), r.stderr
    assert not (tmp_path / "teacher").exists()


def test_call_stops_at_the_ceiling_without_ray(tmp_path):
    """One request at a time through slim.teacher.client.call: each reserves its largest cost first; those that
    do not fit are not sent and come back unsent; the provider's bill stays under the ceiling."""
    s = K.CallSettings("fault-double", 200, 0.0, 3, 0.01, 0.05, PRICE_IN, PRICE_OUT)  # answers: ~130 tokens
    msgs = [{"role": "user", "content": "1. Game A\n2. Game B\n" + "history " * 200}]
    most = K.cost(K.estimate_tokens(msgs, 0), 200, s)
    b = budget.Budget(5.5 * most)
    with fault_server(tmp_path / "fs.log", {}) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=5.0)
        rows = [K.call(c, u, f"p{u}", msgs, s, lambda n: 0.0, lambda d: None, lambda t: None, random.Random(u),
                       budget=b) for u in range(20)]
        billed, sent = _billed_usd(srv.url), _requests(srv.url)
    statuses = [r[C.STATUS] for r in rows]
    n_ok = statuses.count("ok")
    assert n_ok >= 5 and statuses == ["ok"] * n_ok + [K.UNSENT] * (20 - n_ok)  # real answers cost less than most
    assert sorted(sent) == list(range(n_ok)) and billed <= 5.5 * most
    assert b.spent == pytest.approx(sum(r[C.COST_USD] for r in rows))  # reservations settled to the real cost
    assert all(r[C.BILLED] == 0 and r[C.COST_USD] == 0 for r in rows[n_ok:])


def _cfg(rd, url, **kw):
    base = dict(run_dir=str(rd.root), model="fault-double", base_url=url, api_key_env="", num_users=40,
                max_tokens=200, requests_per_min=0, tokens_per_min=0, num_actors=2, threads_per_actor=4,
                batch_size=4, request_timeout_s=5.0, max_attempts=4, backoff_base_s=0.05, backoff_max_s=0.2,
                price_in_per_mtok=PRICE_IN, price_out_per_mtok=PRICE_OUT)
    return job.TeacherConfig(**{**base, **kw})


def test_cost_ceiling_stops_the_stage_before_it_is_exceeded(tmp_path, ray_local):
    """The stage against the fault server (a 500 every 7th request: retries cost too): with a ceiling about a
    third of the estimated bill it stops with CeilingReached (a ConfigError: one line, exit 2), the provider billed
    at most the ceiling, every paid answer is kept and no manifest is written; rerun with a higher ceiling, it
    sends exactly the users not answered before and finishes."""
    rd = write_data_stage(tmp_path / "run", 60)
    with fault_server(tmp_path / "fs.log", {"500": 7}) as srv:
        est = job.run(_cfg(rd, srv.url, dry_run=True)).extra["dry_run"]  # sends nothing
        assert _requests(srv.url) == []
        ceiling = round(est["cost_usd_max"] / 3, 6)
        with pytest.raises(budget.CeilingReached, match=r"teacher\.max_cost_usd=.*users not sent") as e:
            job.run(_cfg(rd, srv.url, max_cost_usd=ceiling))
        assert isinstance(e.value, ConfigError)
        first, billed = _requests(srv.url), _billed_usd(srv.url)
        assert 0 < billed <= ceiling and 0 < len(set(first)) < 40
        kept = shards.read_latest(rd.stage_dir("teacher"))
        kept_users = set(kept.column(C.USER_ID).to_pylist())
        assert kept_users == _billed_users(srv.url)  # every user billed has its row, no others
        # a user sent but not kept got only unbilled 500s, then the ceiling refused its retry: unsent, not failed
        faults = _faults(srv.url)
        assert all(set(faults[u]) == {"500"} for u in set(first) - kept_users)
        assert rd.read_manifest("teacher") is None
        m = job.run(_cfg(rd, srv.url, max_cost_usd=1.0))
        again = _requests(srv.url)[len(first):]
    final = shards.read_latest(rd.stage_dir("teacher"))
    assert m.counts["users"] == 40 == final.num_rows
    answered = {r[C.USER_ID] for r in kept.to_pylist() if r[C.STATUS] != "failed"}  # failed rows are retried
    assert set(again) == set(final.column(C.USER_ID).to_pylist()) - answered
