"""Teacher stage: limiter, sampling, prompts, and a full run against the fault-injecting test double."""

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.io import shards as io_shards
from slim.text.prompts import PromptConfig
from slim.teacher import client as K
from slim.teacher import select, shards
from slim.teacher import stage as job
from slim.testing import fault_server
from slim.teacher.ratelimit import RateLimiter
from slim.testing.rundata import write_data_stage


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_limiter_paces_requests_and_tokens():
    clk = FakeClock()
    lim = RateLimiter(requests_per_min=60, tokens_per_min=0, clock=clk)
    assert [lim.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]  # one per second, no burst
    clk.t += 10  # idle time earns no burst credit
    assert [lim.reserve(), lim.reserve()] == [0.0, 1.0]
    tok = RateLimiter(requests_per_min=0, tokens_per_min=600, clock=clk)  # 10 tokens/s
    assert tok.reserve(50) == 0.0 and tok.reserve(10) == pytest.approx(5.0)
    tok.adjust(-20)  # the second request used 20 fewer tokens than reserved: 6.0 s becomes 5.0 s (its start)
    assert tok.reserve(1) == pytest.approx(5.0)
    assert tok.reserve(0) == pytest.approx(5.1)  # starts stay in order (FIFO); 1 token = 0.1 s
    both = RateLimiter(requests_per_min=60, tokens_per_min=600, clock=clk)
    both.reserve(5)  # token gap 0.5 s < request gap 1 s: requests/min binds
    assert both.reserve(5) == pytest.approx(1.0)
    both.pause(30)
    assert both.reserve(0) == pytest.approx(30.0)


def test_retry_after_and_backoff():
    assert K.retry_after({"retry-after": "2"}) == 2.0
    assert K.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert K.retry_after({}) is None
    rng = __import__("random").Random(0)
    for attempt, full in ((1, 1.0), (3, 4.0), (10, 60.0)):
        d = [K.backoff(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert full / 2 <= min(d) and max(d) <= full and np.std(d) > 0  # jittered within [d/2, d]


def test_stratified_sample_exact_fixed_and_covers_lengths():
    lens = np.r_[np.full(800, 5), np.arange(6, 206)]  # many short histories, a long tail
    a = select.stratified_sample(lens, 100, seed=1)
    assert len(a) == len(set(a)) == 100 and np.array_equal(a, select.stratified_sample(lens, 100, seed=1))
    assert not np.array_equal(a, select.stratified_sample(lens, 100, seed=2))
    assert 15 <= (lens[a] > 5).sum() <= 25  # the tail's 20% share, not left to chance
    assert len(select.stratified_sample(lens, 5000, seed=1)) == len(lens)


def test_prompt_uses_training_prefix_titles_category_brand(tmp_path):
    rd = write_data_stage(tmp_path, 5)
    users, items = pq.read_table(rd.path(C.USERS_FILE)), pq.read_table(rd.path(C.ITEMS_FILE))
    rows = select.build_prompts(users, items, np.arange(5), PromptConfig())
    text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
    for r, hist in zip(rows, users.column(C.ITEM_IDS).to_pylist()):
        assert text[hist[-4]] in r[C.PROMPT] and "Step 3:" in r[C.PROMPT]
        # the rationale prefix is item_ids[:-3]: one numbered line per item, the last training target not among them
        assert sum(line[:1].isdigit() for line in r[C.PROMPT].splitlines()) == min(len(hist) - 3, 20)
        for held in hist[-3:]:
            assert held in hist[:-3] or f"{text[held]}\n" not in r[C.PROMPT] + "\n"  # never leaks
        assert r["messages"][0]["role"] == "system" and r["messages"][1]["content"] == r[C.PROMPT]
    assert any("Brand: Nintendo" in r[C.PROMPT] for r in rows) and any("Category: RPG" in r[C.PROMPT] for r in rows)


def test_compaction_keeps_every_paid_row_and_latest_wins_by_write_time(tmp_path):
    """Today's compaction deleted the rows of users outside the selection (paid for) and superseded rows."""
    s = K.CallSettings("m", 10, 0.0, 3, 0.1, 1.0, 1.0, 2.0)
    main = tmp_path / shards.MAIN
    early = [K.failed_row(1, "p", "HTTP 400", s, 1), K.row_from_answer(2, "p", "Step 1: x", "stop", 7, 3, s, 1)]
    late = K.row_from_answer(1, "p", "Step 1: a\nStep 2: b\nStep 3: c", "stop", 10, 5, s, 2)
    shards.write_shard(main, [late])
    shards.write_shard(main, early)  # a newer file, but older rows: the row's own write time decides
    (main / ".tmp123-part-x.parquet").write_bytes(b"partial")
    shards.recover(tmp_path)
    assert not list(main.glob(".tmp*"))
    assert shards.read_latest(tmp_path).column(C.STATUS).to_pylist() == ["ok", "malformed"]
    final = shards.compact(tmp_path, {1})  # user 2 leaves the selection
    assert final.column(C.ROW_ID).to_pylist() == [late[C.ROW_ID]]
    assert shards.read_all(tmp_path).num_rows == 3  # nothing paid is dropped: two rows wait in archive/
    assert len(io_shards.shard_files(main)) == 1 and len(io_shards.shard_files(tmp_path / shards.ARCHIVE)) == 1
    assert shards.compact(tmp_path, {1}).num_rows == 1 and len(io_shards.shard_files(main)) == 1  # idempotent
    back = shards.compact(tmp_path, {1, 2})  # user 2 is selected again: their paid row comes back
    assert back.column(C.ROW_ID).to_pylist() == [late[C.ROW_ID], early[1][C.ROW_ID]]
    led = shards.ledger(shards.read_all(tmp_path), back)
    assert led["billed"]["requests"] == 2 and led["billed"]["cost_usd"] == pytest.approx((17 + 16) / 1e6)
    assert led["useful"]["rows"] == 1 and led["useful"]["cost_usd"] == pytest.approx(20 / 1e6)


def test_a_fold_killed_halfway_counts_each_row_once(tmp_path):
    s = K.CallSettings("m", 10, 0.0, 3, 0.1, 1.0, 1.0, 2.0)
    log = shards.RowLog(tmp_path)
    rows = [K.row_from_answer(u, "p", "Step 1: a\nStep 2: b\nStep 3: c", "stop", 10, 5, s, 1) for u in range(3)]
    for r in rows:
        log.append(r)
    log.f.write('{"user_id": 9, "prom')  # the line a kill cut short: that request counts as in flight
    log.f.flush()
    assert shards.fold_logs(tmp_path) == 3 and log.path.exists()  # a live writer's log is folded, not deleted
    log.f.close()  # the actor is gone: the next fold reads it again (same row ids) and deletes it
    assert shards.fold_logs(tmp_path) == 3 and not log.path.exists()
    assert shards.read_all(tmp_path).num_rows == 3 and shards.compact(tmp_path, {0, 1, 2}).num_rows == 3
    assert io_shards.read_shards(tmp_path / shards.MAIN, columns=[C.USER_ID]).num_rows == 3


SCHEDULE = {"429": 6, "500": 7, "timeout": 11, "malformed": 9, "truncated": 13, "400": 19}
RPM = 300


def _cfg(rd, url, **kw):
    base = dict(run_dir=str(rd.root), model="fault-double", base_url=url, api_key_env="", num_users=40,
                max_tokens=200, requests_per_min=RPM, tokens_per_min=0, num_actors=2, threads_per_actor=4,
                batch_size=4, request_timeout_s=0.8, max_attempts=12, backoff_base_s=0.05, backoff_max_s=0.5,
                price_in_per_mtok=1.0, price_out_per_mtok=4.0)
    return job.TeacherConfig(**{**base, **kw})


def test_faults_rate_limit_exactly_one_row_per_user_then_retry_failed(tmp_path, ray_local):
    rd = write_data_stage(tmp_path / "run", 60)
    with fault_server(tmp_path / "fs.log", SCHEDULE, latency_s=0.01, retry_after=0.5, timeout_sleep=1.2) as srv:
        m = job.run(_cfg(rd, srv.url))
        stats = json.loads(__import__("urllib.request").request.urlopen(srv.url[:-3] + "/stats").read())
        final = io_shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA)
        rows = {r[C.USER_ID]: r for r in final.to_pylist()}
        assert len(rows) == final.num_rows == 40 == m.counts["users"]
        reqs = stats["requests"]
        per_user = collections.Counter(int(u) for _, u, _ in reqs)
        assert set(per_user) == set(rows)  # only selected users were sent, and every one of them
        assert all(per_user[u] == r[C.ATTEMPTS] for u, r in rows.items())  # every request is accounted for
        assert sum(r[C.BILLED] for r in rows.values()) == len(stats["billed"])  # and every billed response
        faults = collections.Counter(f for _, _, f in reqs)
        assert all(faults[f] > 0 for f in ("429", "500", "timeout", "malformed", "truncated", "400"))
        for r in rows.values():
            if r[C.STATUS] == "ok":
                assert r[C.STEP1] and r[C.STEP2] and r[C.STEP3] and r[C.TOKENS_OUT] > 0 and r[C.BILLED] >= 1
                assert r[C.COST_USD] == pytest.approx((r[C.TOKENS_IN] + 4 * r[C.TOKENS_OUT]) / 1e6)
            elif r[C.STATUS] == "malformed":
                assert "truncated" in r[C.ERROR] and not r[C.STEP3]
            else:  # a permanent 4xx ends a row at once; retryable faults only after max_attempts (rare here)
                assert r[C.ERROR].startswith(("HTTP 400", "gave up after 12 attempts")), r[C.ERROR]
        q = m.extra["quality"]  # slim.text.quality over the kept answers: the parse rate is the share of ok rows
        assert q["n"] == 40 and q["parse_rate"] == pytest.approx(100 * m.counts["ok"] / 40)
        gave_up = sum(r[C.ERROR].startswith("gave up") for r in rows.values())
        assert m.counts["failed"] == faults["400"] + gave_up and m.counts["malformed"] == faults["truncated"]
        _assert_rate_and_retry_after(reqs)
        cost = json.loads(rd.path("teacher/cost.json").read_text())
        assert cost["cost_usd"] == pytest.approx(sum(r[C.COST_USD] for r in rows.values()))
        assert cost["billed"]["requests"] == len(stats["billed"]) and cost["useful"]["rows"] == m.counts["ok"]
        assert cost["billed"]["unpriced_requests"] == faults["malformed"] > 0
        failed = {u for u, r in rows.items() if r[C.STATUS] == "failed"}

        # Rerun the same config: only the failed users are sent again; their old rows are superseded.
        m2 = job.run(_cfg(rd, srv.url))
        stats2 = json.loads(__import__("urllib.request").request.urlopen(srv.url[:-3] + "/stats").read())
    again = {int(u) for _, u, _ in stats2["requests"][len(reqs):]}
    assert again == failed
    final2 = io_shards.read_shards(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA)
    assert final2.num_rows == 40 and len(set(final2.column(C.USER_ID).to_pylist())) == 40
    assert m2.counts["failed"] < len(failed) and len(io_shards.shard_files(rd.path(C.TEACHER_SHARDS))) == 1


def _assert_rate_and_retry_after(reqs):
    times = np.array(sorted(t for t, _, _ in reqs))
    gap = 60.0 / RPM
    rate = np.polyfit(times - times[0], np.arange(len(times)), 1)[0]  # requests/s, least squares
    assert rate <= 1.05 / gap, rate
    # Workers that wake late on a busy machine send close together; a short window may bunch, a long one not.
    spans = times[20:] - times[:-20]
    assert spans.min() >= 0.7 * 20 * gap, spans.min()
    by_user = collections.defaultdict(list)
    for t, u, f in reqs:
        by_user[u].append((t, f))
    waits = [b[0] - a[0] for seq in by_user.values() for a, b in zip(seq, seq[1:]) if a[1] == "429"]
    assert waits and min(waits) >= 0.5  # Retry-After: 0.5 honoured before the same user's next attempt


def test_dry_run_spends_nothing(tmp_path, capsys):
    rd = write_data_stage(tmp_path, 30)
    cfg = job.TeacherConfig(run_dir=str(rd.root), base_url="http://127.0.0.1:9/v1", api_key_env="",
                            num_users=20, max_tokens=100, price_in_per_mtok=1.0, price_out_per_mtok=2.0,
                            dry_run=True)
    m = job.run(cfg)
    est = m.extra["dry_run"]
    assert est["users"] == 20 and est["tokens_out_max"] == 2000 and est["tokens_in"] > 20 * 50
    assert est["cost_usd_max"] == pytest.approx((est["tokens_in"] + 2 * 2000) / 1e6)
    assert "to send" in capsys.readouterr().out and not rd.path("teacher/manifest.json").exists()
    assert not io_shards.shard_files(rd.path(C.TEACHER_SHARDS))


def test_batch_api_mode_half_price_and_failed_rows(tmp_path):
    rd = write_data_stage(tmp_path / "run", 30)
    with fault_server(tmp_path / "fs.log", {"400": 7}) as srv:
        cfg = _cfg(rd, srv.url, mode="batch", num_users=20, batch_poll_s=0.05)
        m = job.run(cfg)
    final = io_shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
    assert len(final) == 20 and m.counts["failed"] == 2 and m.counts["ok"] == 18
    ok = [r for r in final if r[C.STATUS] == "ok"]
    assert all(r[C.COST_USD] == pytest.approx(0.5 * (r[C.TOKENS_IN] + 4 * r[C.TOKENS_OUT]) / 1e6) for r in ok)
    assert not rd.path("teacher/batch_state.json").exists()


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_structured_mode_asks_for_the_schema_online_and_in_batch(tmp_path, ray_local, mode):
    """teacher.structured sends response_format on both paths; the double answers JSON only when asked."""
    with fault_server(tmp_path / "fs.log", {}) as srv:
        for structured, sub in ((False, "free"), (True, "json")):
            rd2 = write_data_stage(tmp_path / sub, 12)
            m = job.run(_cfg(rd2, srv.url, mode=mode, num_users=6, structured=structured, batch_poll_s=0.05))
            rows = io_shards.read_latest(rd2.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
            assert m.counts["ok"] == 6 and m.extra["quality"]["parse_rate"] == 100.0
            assert all(r[C.RATIONALE].startswith("{") == structured for r in rows)
            assert all(r[C.STEP3].startswith("Category A: Product A1") for r in rows if structured)


def test_few_shot_examples_are_sent_and_changing_them_asks_again(tmp_path, ray_local):
    from slim.text.prompts import Example, PromptConfig

    rd = write_data_stage(tmp_path / "run", 12)

    def sent(srv):
        return json.loads(__import__("urllib.request").request.urlopen(srv.url[:-3] + "/stats").read())["turns"]

    one = PromptConfig(teacher_examples=(Example("1. Zelda\n2. Metroid", "Step 1: Nintendo adventures."),))
    other = PromptConfig(teacher_examples=(Example("1. Zelda\n2. Metroid", "Step 1: Exploration games."),))
    with fault_server(tmp_path / "fs.log", {}) as srv:
        job.run(_cfg(rd, srv.url, num_users=6))
        zero = io_shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
        assert sent(srv) == [2] * 6 and all(r[C.PROMPT].startswith("A user bought") for r in zero)
        for prompt, new in ((one, 6), (one, 0), (other, 6)):
            before = len(sent(srv))
            m = job.run(_cfg(rd, srv.url, num_users=6, prompt=prompt))
            assert len(sent(srv)) - before == new and m.counts["ok"] == 6
        assert sent(srv)[6:] == [4] * 12  # system, example question and answer, the user
    rows = io_shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
    assert all("Exploration games" in r[C.PROMPT] for r in rows)


def test_lowering_num_users_keeps_paid_rows_for_when_it_grows_back(tmp_path, ray_local):
    """Today's compaction deleted rows outside the selection: raising num_users again paid for them twice."""
    rd = write_data_stage(tmp_path / "run", 30)
    with fault_server(tmp_path / "fs.log", {}) as srv:
        def sent():
            return len(json.loads(__import__("urllib.request").request.urlopen(srv.url[:-3] + "/stats").read())
                       ["requests"])

        job.run(_cfg(rd, srv.url, num_users=12))
        assert sent() == 12
        m5 = job.run(_cfg(rd, srv.url, num_users=5))
        n_small = sent()
        m = job.run(_cfg(rd, srv.url, num_users=12))
        assert sent() == n_small and m.counts == {"users": 12, "ok": 12, "malformed": 0, "failed": 0}
    assert m5.counts["users"] == 5
    cost = json.loads(rd.path("teacher/cost.json").read_text())
    assert cost["billed"]["requests"] == n_small == cost["billed"]["rows"]  # each paid once, each row kept
