"""Every paid answer kept: the teacher job killed with SIGKILL at random points and restarted, against a server
that injects 429s (garbled and far too long Retry-After), 500s, timeouts, empty and cut-off bodies."""

import collections

import pyarrow.compute as pc
import pytest

from slim.io import columns as C
from slim.io import shards as S
from slim.teacher import shards
from slim.testing.chaos import run_chaos
from slim.testing.rundata import write_data_stage


def _check(res, run_dir, num_users, kills):
    assert res.final_rc == 0, res.final_log
    assert len(res.kills) == kills and sum(k["killed"] for k in res.kills) >= 1, res.kills
    assert all(k["rc"] in (0, -9) for k in res.kills), res.kills  # killed, or it had finished first
    final = S.read_shards(run_dir / C.TEACHER_SHARDS, schema=shards.SCHEMA)  # what downstream stages read
    users = final.column(C.USER_ID).to_pylist()
    assert len(users) == len(set(users)) == num_users  # every selected user exactly once
    assert set(final.column(C.STATUS).to_pylist()) <= {"ok", "malformed", "failed"}
    billed = res.server["billed"]
    lost = len(billed) - res.cost["billed"]["requests"]
    # The server's count = the rows' count + what was in flight at the kills, never more than that.
    assert 0 <= lost <= kills * res.in_flight_max, (lost, res.kills)
    assert all(0 <= k["lost_so_far"] <= (i + 1) * res.in_flight_max for i, k in enumerate(res.kills)), res.kills
    readable = [b for b in billed if b[1] != "malformed"]
    tok_gap = sum(b[2] + b[3] for b in readable) - (res.cost["billed"]["tokens_in"] + res.cost["billed"]["tokens_out"])
    assert 0 <= tok_gap <= lost * max(b[2] + b[3] for b in readable)
    if lost == 0:  # nothing in flight at any kill: cost.json is the server's own count, to the token
        assert tok_gap == 0 and res.cost["billed"]["unpriced_requests"] == len(billed) - len(readable)
    want = (res.cost["billed"]["tokens_in"] * 1.0 + res.cost["billed"]["tokens_out"] * 4.0) / 1e6
    assert res.cost["cost_usd"] == pytest.approx(want)
    faults = collections.Counter(f for _, _, f in res.server["requests"])
    assert all(faults[f] for f in ("429", "500", "timeout", "malformed", "truncated", "empty")), faults
    everything = shards.read_all(run_dir / "teacher")
    assert pc.sum(everything.column(C.BILLED)).as_py() == res.cost["billed"]["requests"]  # kept in rows, all of it


def test_killed_twice_every_paid_answer_kept(tmp_path, ray_local):
    rd = write_data_stage(tmp_path / "run", 40)
    gcs = ray_local.get_runtime_context().gcs_address
    res = run_chaos(tmp_path, rd.root, gcs, num_users=16, kills=2, seed=1)
    print(res.kills)
    _check(res, rd.root, 16, 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_killed_many_times_every_paid_answer_kept(tmp_path, ray_local, seed):
    rd = write_data_stage(tmp_path / "run", 120)
    gcs = ray_local.get_runtime_context().gcs_address
    res = run_chaos(tmp_path, rd.root, gcs, num_users=80, kills=6, seed=seed)
    _check(res, rd.root, 80, 6)
