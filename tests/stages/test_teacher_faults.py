"""The retry loop against the fault-injecting server, one request at a time (no Ray): every fault ends in a row,
waits are capped, and every response the server billed is in a row, usable or not."""

import json
import random
import urllib.request

import openai
import pytest

from slim.io import columns as C
from slim.teacher import client as K
from slim.testing import fault_server

MSGS = [{"role": "user", "content": "1. Game A\n2. Game B\nStep 3: recommend"}]


def _settings(**kw):
    base = dict(model="fault-double", max_tokens=50, temperature=0.0, max_attempts=8, backoff_base_s=0.05,
                backoff_max_s=0.4, price_in_per_mtok=1.0, price_out_per_mtok=4.0)
    return K.CallSettings(**{**base, **kw})


def _run(url, users, s, reserve=lambda n: 0.0, pause=None):
    """Rows for `users`, and every wait the loop asked for (recorded, not slept: the test stays fast)."""
    waits, pauses = [], []
    c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=2.0)
    rows = [K.call(c, u, f"p{u}", MSGS, s, reserve, lambda d: None, pause or pauses.append, random.Random(u),
                   sleep=waits.append) for u in users]
    return rows, waits, pauses


def _stats(url):
    return json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())


def test_unreadable_retry_after_is_a_plain_retry(tmp_path):
    """Today's code raised ValueError from parsedate_to_datetime inside the retry handler: the batch failed."""
    bad = "soon|Mon, 99 Foo 2025 99:99:99 GMT|-5|nan|inf|"
    with fault_server(tmp_path / "fs.log", {"429": 2}, retry_after=bad) as srv:
        rows, waits, pauses = _run(srv.url, range(8), _settings())
    assert [r[C.STATUS] for r in rows] == ["ok"] * 8 and sum(r[C.ATTEMPTS] for r in rows) >= 14
    assert pauses == [] and max(waits) <= 0.4  # no Retry-After read: the backoff alone, within its cap


def test_retry_after_is_capped(tmp_path):
    """A provider asking for an hour must not stall the job for an hour: waits stop at retry_after_max_s."""
    with fault_server(tmp_path / "fs.log", {"429": 2}, retry_after="3600|Fri, 31 Dec 2100 23:59:59 GMT") as srv:
        rows, waits, pauses = _run(srv.url, range(4), _settings(retry_after_max_s=0.5))
    assert [r[C.STATUS] for r in rows] == ["ok"] * 4
    assert len(pauses) >= 3 and max(pauses) == 0.5 and max(waits) == 0.5


def test_no_exception_escapes_a_row(tmp_path):
    """A dead rate-limiter actor (or any bug) makes failed rows with the error, not a failed Ray Data batch."""
    def dead(_):
        raise RuntimeError("rate limiter actor died")

    def pause_dead(_):
        raise RuntimeError("pause: actor died")

    with fault_server(tmp_path / "fs.log", {"429": 1}, retry_after="1") as srv:
        rows, _, _ = _run(srv.url, [1, 2], _settings(), reserve=dead)
        rows2, _, _ = _run(srv.url, [3], _settings(), pause=pause_dead)
    for r in rows + rows2:
        assert r[C.STATUS] == "failed" and r[C.ERROR].startswith("internal error: RuntimeError")
    assert rows2[0][C.ATTEMPTS] == 1


def test_every_billed_response_is_in_its_row(tmp_path):
    """Empty and garbled 200s are paid for: today's code retried them and recorded cost 0 for them."""
    s = _settings()
    with fault_server(tmp_path / "fs.log", {"empty": 2, "malformed": 3}) as srv:
        rows, _, _ = _run(srv.url, range(10), s)
        billed = _stats(srv.url)["billed"]
    assert all(r[C.STATUS] == "ok" for r in rows)
    assert sum(r[C.BILLED] for r in rows) == len(billed) > 10  # retries of unusable answers were billed too
    readable = [b for b in billed if b[1] != "malformed"]  # a garbled body's usage cannot be read
    assert sum(r[C.UNPRICED] for r in rows) == len(billed) - len(readable) > 0
    assert sum(r[C.TOKENS_IN] for r in rows) == sum(b[2] for b in readable)
    assert sum(r[C.TOKENS_OUT] for r in rows) == sum(b[3] for b in readable)
    for r in rows:
        assert r[C.COST_USD] == pytest.approx((r[C.TOKENS_IN] + 4 * r[C.TOKENS_OUT]) / 1e6)
        assert (r[C.WASTED_USD] > 0) == (r[C.BILLED] - r[C.UNPRICED] > 1)  # the kept answer is not waste


def test_retry_after_parsing():
    assert K.retry_after({"retry-after": "2"}) == 2.0
    assert K.retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert K.retry_after({"retry-after-ms": "x", "retry-after": "9"}) == 9.0
    for bad in ("soon", "nan", "inf", "-1", "Mon, 99 Foo 2025", " ", "1e999"):
        assert K.retry_after({"retry-after": bad}) is None, bad
    assert 0 <= K.retry_after({"retry-after": "Fri, 31 Dec 2100 23:59:59 GMT"}) < 1e10
