"""One teacher request with retries: exponential backoff with jitter, Retry-After honoured (capped), 4xx recorded.

The `openai` client's own retries are off (max_retries=0): every attempt must pass through the global rate
limiter, and the row must record how many attempts it took and every response it was billed for. Whatever
happens (a garbled header, a dead rate-limiter actor, a bug), `call` returns a row, ok or failed with its error:
an exception escaping a row would fail the Ray Data batch and with it the job.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from slim.io import columns as C
from slim.text import rationale

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429}  # plus every 5xx; 408 is a timeout. Other 4xx: a failed row, no retry.


@dataclass(frozen=True)
class CallSettings:
    model: str
    max_tokens: int
    temperature: float
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    price_in_per_mtok: float
    price_out_per_mtok: float
    price_factor: float = 1.0  # 0.5 in Batch API mode
    extra_body: dict | None = None  # provider-specific request fields
    retry_after_max_s: float = 120.0  # a Retry-After longer than this is cut to it
    response_format: dict | None = None  # structured answers (slim.text.rationale.SCHEMA) from an API that takes them


def request_fields(s: CallSettings, flat: bool = False) -> dict:
    """The fields of one chat request besides the messages, for the online client and the Batch API alike.
    flat: provider-specific extra_body fields merged into the body (a Batch API line) rather than passed apart."""
    out = {"model": s.model, "max_tokens": s.max_tokens, "temperature": s.temperature}
    if s.response_format:
        out["response_format"] = s.response_format
    if flat:
        return {**out, **(s.extra_body or {})}
    return {**out, "extra_body": s.extra_body or None}


@dataclass
class Bill:
    """What one row has been billed for so far, over all its attempts."""

    requests: int = 0  # responses received with status 200, usable or not
    unpriced: int = 0  # of those, the ones whose usage could not be read
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, tin: int, tout: int, s: CallSettings, priced: bool = True) -> float:
        c = cost(tin, tout, s)
        self.requests += 1
        self.unpriced += not priced
        self.tokens_in, self.tokens_out, self.cost_usd = self.tokens_in + tin, self.tokens_out + tout, self.cost_usd + c
        return c


def retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            secs = float(value) * scale
        except (TypeError, ValueError):
            secs = _http_date(value) if scale == 1.0 else None
        if secs is not None and math.isfinite(secs) and secs >= 0:
            return secs
    return None


def _http_date(value) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None  # a garbled header is no header: the backoff alone decides the wait


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Equal jitter: half the exponential delay fixed, half random, so retrying workers spread out."""
    d = min(cap, base * 2 ** min(attempt - 1, 60))
    return d / 2 + rng.uniform(0, d / 2)


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """Providers count prompt + max_tokens against tokens/min before answering; ~4 characters per token."""
    chars = sum(len(m["content"]) for m in messages)
    return chars // 4 + 4 * len(messages) + max_tokens


def cost(tokens_in: int, tokens_out: int, s: CallSettings) -> float:
    return (tokens_in * s.price_in_per_mtok + tokens_out * s.price_out_per_mtok) / 1e6 * s.price_factor


def _row(user_id: int, prompt: str, s: CallSettings, attempts: int, bill: Bill, status: str, error: str,
         text: str = "", steps=("", "", ""), kept_cost: float = 0.0) -> dict:
    return {
        C.USER_ID: user_id, C.PROMPT: prompt, C.RATIONALE: text, C.STEP1: steps[0], C.STEP2: steps[1],
        C.STEP3: steps[2], C.MODEL: s.model, C.TOKENS_IN: bill.tokens_in, C.TOKENS_OUT: bill.tokens_out,
        C.COST_USD: bill.cost_usd, C.STATUS: status, C.ERROR: error[:500], C.ATTEMPTS: attempts,
        C.BILLED: bill.requests, C.UNPRICED: bill.unpriced, C.WASTED_USD: max(0.0, bill.cost_usd - kept_cost),
        C.ROW_ID: uuid.uuid4().hex, C.WRITTEN_AT: time.time_ns(),
    }


def row_from_answer(user_id: int, prompt: str, text: str, finish: str | None, tin: int, tout: int,
                    s: CallSettings, attempts: int, bill: Bill | None = None) -> dict:
    """The row of a usable answer; `bill` holds the earlier billed attempts (this answer is added to it)."""
    bill = bill or Bill()
    kept = bill.add(tin, tout, s)
    p = rationale.parse(text)
    problem = p.problem
    if finish == "length":
        problem = "truncated at max_tokens" + (f"; {problem}" if problem else "")
    status = "ok" if p.ok and finish != "length" else "malformed"
    return _row(user_id, prompt, s, attempts, bill, status, problem, text, (p.step1, p.step2, p.step3), kept)


def failed_row(user_id: int, prompt: str, error: str, s: CallSettings, attempts: int, bill: Bill | None = None) -> dict:
    return _row(user_id, prompt, s, attempts, bill or Bill(), "failed", error)


def _classify(exc: Exception) -> tuple[bool, float | None, str, bool]:
    """(retryable, Retry-After seconds, short error text, billed) for an exception from the openai client."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        msg = f"HTTP {code}: {str(exc.message)[:300]}"
        return code in RETRY_STATUS or code >= 500, retry_after(exc.response.headers), msg, False
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True, None, type(exc).__name__, False
    # A 200 whose body is not the expected JSON (cut off, garbled): billed, usage unknown; the next try may be fine.
    return True, None, f"bad response: {type(exc).__name__}: {str(exc)[:200]}", True


UNSENT = "unsent"  # the status of a row the cost ceiling kept from being sent: returned, never written


def call(client, user_id: int, prompt: str, messages: list[dict], s: CallSettings,
         reserve: Callable[[int], float], adjust: Callable[[int], None], pause: Callable[[float], None],
         rng: random.Random, sleep=time.sleep, budget=None) -> dict:
    """Send one user's prompt until it succeeds, fails for good, or runs out of attempts; always returns the row.
    budget: a slim.teacher.budget.Budget (or handle) each attempt reserves its largest cost from first."""
    from slim.teacher.budget import OverBudget

    bill, tries = Bill(), [0]
    try:
        return _attempts(client, user_id, prompt, messages, s, reserve, adjust, pause, rng, sleep, bill, tries, budget)
    except OverBudget:
        if bill.requests == 0:  # nothing paid: no row, the next run sends it
            return _row(user_id, prompt, s, tries[0] - 1, bill, UNSENT, "teacher.max_cost_usd reached")
        return failed_row(user_id, prompt, "teacher.max_cost_usd reached before a retry", s, tries[0] - 1, bill)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a failed row, never a failed batch
        log.warning("user %s: unexpected %s: %s", user_id, type(exc).__name__, exc)
        return failed_row(user_id, prompt, f"internal error: {type(exc).__name__}: {exc}", s, tries[0], bill)


def _settle(budget, reserved: float, spent: float) -> None:
    """Give back to the budget what an attempt reserved and did not cost (negative: it cost more)."""
    if budget is not None and spent != reserved:
        budget.give(reserved - spent)


def _attempts(client, user_id, prompt, messages, s, reserve, adjust, pause, rng, sleep, bill, tries, budget) -> dict:
    from slim.teacher.budget import OverBudget

    est = estimate_tokens(messages, s.max_tokens)
    most = cost(est - s.max_tokens, s.max_tokens, s)  # the largest this attempt can cost: a full-length answer
    error = ""
    for attempt in range(1, s.max_attempts + 1):
        tries[0] = attempt
        if budget is not None and not budget.take(most):
            raise OverBudget()
        sleep(reserve(est))
        after, retryable = None, True
        try:
            resp = client.chat.completions.create(messages=messages, extra_headers={"x-slim-user": str(user_id)},
                                                  **request_fields(s))
        except Exception as exc:  # noqa: BLE001 - classified below
            adjust(-est)  # nothing was generated (or we cannot tell how much); give the reserved tokens back
            retryable, after, error, billed = _classify(exc)
            if billed:
                bill.add(0, 0, s, priced=False)
            _settle(budget, most, most if billed else 0.0)  # billed, usage unknown: the whole reservation stays
        else:
            usage = resp.usage
            tin, tout = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
            adjust(tin + tout - est)
            _settle(budget, most, cost(tin, tout, s) if usage else most)
            choice = resp.choices[0] if resp.choices else None
            text = choice.message.content if choice is not None and choice.message is not None else None
            if text and text.strip():
                return row_from_answer(user_id, prompt, text, choice.finish_reason, tin, tout, s, attempt, bill)
            bill.add(tin, tout, s, priced=usage is not None)  # paid for, unusable: counted, then retried
            error = "empty answer" if choice is not None else "answer has no choices"
        if not retryable:
            return failed_row(user_id, prompt, error, s, attempt, bill)
        if attempt == s.max_attempts:
            break
        if after is not None:
            after = min(after, s.retry_after_max_s)
            pause(after)  # everyone holds back; this request also waits at least that long
        wait = max(after or 0.0, backoff(attempt, s.backoff_base_s, s.backoff_max_s, rng))
        log.debug("user %s attempt %d: %s; retry in %.2fs", user_id, attempt, error, wait)
        sleep(wait)
    return failed_row(user_id, prompt, f"gave up after {s.max_attempts} attempts: {error}", s, s.max_attempts, bill)
