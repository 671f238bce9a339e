"""One teacher request with retries: exponential backoff with jitter, Retry-After honoured, 4xx recorded.

The `openai` client's own retries are off (max_retries=0): every attempt must pass through the global rate
limiter, and the row must record how many attempts it took.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from slim import columns as C
from slim import rationale

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


def retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None when absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Equal jitter: half the exponential delay fixed, half random, so retrying workers spread out."""
    d = min(cap, base * 2 ** (attempt - 1))
    return d / 2 + rng.uniform(0, d / 2)


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """Providers count prompt + max_tokens against tokens/min before answering; ~4 characters per token."""
    chars = sum(len(m["content"]) for m in messages)
    return chars // 4 + 4 * len(messages) + max_tokens


def cost(tokens_in: int, tokens_out: int, s: CallSettings) -> float:
    return (tokens_in * s.price_in_per_mtok + tokens_out * s.price_out_per_mtok) / 1e6 * s.price_factor


def row_from_answer(user_id: int, prompt: str, text: str, finish: str | None, tin: int, tout: int,
                    s: CallSettings, attempts: int) -> dict:
    p = rationale.parse(text)
    problem = p.problem
    if finish == "length":
        problem = "truncated at max_tokens" + (f"; {problem}" if problem else "")
    return {
        C.USER_ID: user_id, C.PROMPT: prompt, C.RATIONALE: text, C.STEP1: p.step1, C.STEP2: p.step2,
        C.STEP3: p.step3, C.MODEL: s.model, C.TOKENS_IN: tin, C.TOKENS_OUT: tout,
        C.COST_USD: cost(tin, tout, s), C.STATUS: "ok" if p.ok and finish != "length" else "malformed",
        C.ERROR: problem, C.ATTEMPTS: attempts,
    }


def failed_row(user_id: int, prompt: str, error: str, s: CallSettings, attempts: int) -> dict:
    return {
        C.USER_ID: user_id, C.PROMPT: prompt, C.RATIONALE: "", C.STEP1: "", C.STEP2: "", C.STEP3: "",
        C.MODEL: s.model, C.TOKENS_IN: 0, C.TOKENS_OUT: 0, C.COST_USD: 0.0, C.STATUS: "failed",
        C.ERROR: error[:500], C.ATTEMPTS: attempts,
    }


def _classify(exc: Exception) -> tuple[bool, float | None, str]:
    """(retryable, Retry-After seconds, short error text) for an exception from the openai client."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        msg = f"HTTP {code}: {str(exc.message)[:300]}"
        return code in RETRY_STATUS or code >= 500, retry_after(exc.response.headers), msg
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True, None, type(exc).__name__
    # A 200 whose body is not the expected JSON (cut off, garbled): the next attempt may be fine.
    return True, None, f"bad response: {type(exc).__name__}: {str(exc)[:200]}"


def call(client, user_id: int, prompt: str, messages: list[dict], s: CallSettings,
         reserve: Callable[[int], float], adjust: Callable[[int], None], pause: Callable[[float], None],
         rng: random.Random, sleep=time.sleep) -> dict:
    """Send one user's prompt until it succeeds, fails for good, or runs out of attempts; returns the row."""
    est = estimate_tokens(messages, s.max_tokens)
    error = ""
    for attempt in range(1, s.max_attempts + 1):
        sleep(reserve(est))
        try:
            resp = client.chat.completions.create(
                model=s.model, messages=messages, max_tokens=s.max_tokens, temperature=s.temperature,
                extra_headers={"x-slim-user": str(user_id)}, extra_body=s.extra_body or None,
            )
            choice = resp.choices[0]
            text = choice.message.content
            if text is None:
                raise ValueError("answer has no message content")
            usage = resp.usage
            tin, tout = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            adjust(tin + tout - est)
            return row_from_answer(user_id, prompt, text, choice.finish_reason, tin, tout, s, attempt)
        except Exception as exc:  # noqa: BLE001 - classified below; programming errors surface as failed rows
            adjust(-est)  # nothing was generated; give the reserved tokens back
            retryable, after, error = _classify(exc)
            if not retryable:
                return failed_row(user_id, prompt, error, s, attempt)
            if attempt == s.max_attempts:
                break
            if after is not None:
                pause(after)  # everyone holds back; this request also waits at least that long
            wait = max(after or 0.0, backoff(attempt, s.backoff_base_s, s.backoff_max_s, rng))
            log.debug("user %s attempt %d: %s; retry in %.2fs", user_id, attempt, error, wait)
            sleep(wait)
    return failed_row(user_id, prompt, f"gave up after {s.max_attempts} attempts: {error}", s, s.max_attempts)
