"""TEST DOUBLE: a small OpenAI-compatible server that injects faults on a schedule.

Not a model: it answers every chat completion with a well-formed three-step rationale built from the prompt,
with `usage`, after `--latency` seconds, except on scheduled requests. The schedule maps a fault to a period:
{"429": 7} makes every 7th request (counted over the whole server) a 429 with Retry-After. Faults: 429, 500,
400 (permanent client error), timeout (sleeps past the client's timeout), malformed (a 200 with a broken JSON
body), truncated (an answer cut off inside step 2 with finish_reason=length), empty (a 200 with no content).
`--retry-after` is the 429s' header value, or several separated by "|" used in turn (e.g. "0.2|soon|99999").
Billing is that of a provider: every 200 it sends is billed with its usage, whether the body is usable or not;
a request whose client hung up before the answer is not. /stats lists the billed ones. It also implements the Batch API
subset the job uses (/v1/files, /v1/batches), and /stats reports what it saw for the tests' assertions.
Run: python -m slim.testing.fault_api --port 8011 --schedule '{"429": 7}'
"""


# No `from __future__ import annotations`: FastAPI resolves the handlers' parameter annotations at runtime.
import argparse
import asyncio
import hashlib
import json
import re
import time
import uuid

FAULTS = ("429", "500", "400", "timeout", "malformed", "truncated", "empty")  # priority when periods coincide


def rationale_for(prompt: str) -> str:
    titles = re.findall(r"^\d+\. (.+)$", prompt, re.MULTILINE) or ["various games"]
    first, last = titles[0][:60], titles[-1][:60]
    cats = [f"Category {c}" for c in "ABCDE"]
    step3 = "\n".join(f"{c}: " + ", ".join(f"Product {c[-1]}{k}" for k in range(1, 6)) for c in cats)
    return (f"Step 1: The user enjoys items like {first} and recently {last}.\n"
            f"Step 2: {', '.join(cats)}.\nStep 3:\n{step3}")


def structured_for(prompt: str) -> str:
    """The same answer as JSON under slim.text.rationale.SCHEMA, as a server honouring response_format writes it."""
    titles = re.findall(r"^\d+\. (.+)$", prompt, re.MULTILINE) or ["various games"]
    cats = [{"name": f"Category {c}", "products": [f"Product {c}{k}" for k in range(1, 6)]} for c in "ABCDE"]
    return json.dumps({"preferences": f"The user enjoys items like {titles[0][:60]}.", "categories": cats})


def completion(model: str, content: str, prompt_tokens: int, finish: str = "stop") -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4 + 1,
                  "total_tokens": prompt_tokens + len(content) // 4 + 1},
    }


def build_app(schedule: dict, latency_s: float, retry_after: str, timeout_sleep_s: float):
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    app = FastAPI()
    state = {"n": 0, "requests": [], "turns": [], "billed": [], "n429": 0, "auth": {}, "files": {}, "batches": {}}
    after_values = str(retry_after).split("|")

    def fault_for(n: int) -> str:
        return next((f for f in FAULTS if schedule.get(f) and n % int(schedule[f]) == 0), "")

    def answer(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        ptok = sum(len(m["content"]) for m in body["messages"]) // 4 + 1
        schema = (body.get("response_format") or {}).get("type") == "json_schema"
        text = structured_for(prompt) if schema else rationale_for(prompt)
        return completion(body.get("model", "fault-double"), text, ptok)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fault-double", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state["n"] += 1
        n, fault = state["n"], fault_for(state["n"])
        auth = request.headers.get("authorization", "")
        digest = hashlib.sha256(auth.removeprefix("Bearer ").encode()).hexdigest()  # never the key itself
        state["auth"][digest] = state["auth"].get(digest, 0) + 1
        body = await request.json()
        state["requests"].append([time.time(), request.headers.get("x-slim-user", ""), fault])
        state["turns"].append(len(body["messages"]))
        if fault == "timeout":
            await asyncio.sleep(timeout_sleep_s)
        elif latency_s:
            await asyncio.sleep(latency_s)
        if fault == "429":
            state["n429"] += 1
            value = after_values[(state["n429"] - 1) % len(after_values)]
            return JSONResponse({"error": {"message": "rate limited (injected)", "type": "rate_limit"}},
                                status_code=429, headers={"retry-after": value})
        if fault == "500":
            return JSONResponse({"error": {"message": "server error (injected)"}}, status_code=500)
        if fault == "400":
            return JSONResponse({"error": {"message": "bad request (injected)"}}, status_code=400)
        out = answer(body)
        if fault == "empty":
            out["choices"][0]["message"]["content"] = None
            out["usage"]["completion_tokens"], out["usage"]["total_tokens"] = 1, out["usage"]["prompt_tokens"] + 1
        if not await request.is_disconnected():  # billed like a provider: the answer was generated and sent
            state["billed"].append([request.headers.get("x-slim-user", ""), fault, out["usage"]["prompt_tokens"],
                                    out["usage"]["completion_tokens"]])
        if fault == "malformed":
            return Response(json.dumps(out)[:40], media_type="application/json")
        if fault == "truncated":
            text = out["choices"][0]["message"]["content"]
            out["choices"][0]["message"]["content"] = text[: text.index("Step 2:") + 12]
            out["choices"][0]["finish_reason"] = "length"
        return out

    @app.get("/stats")
    async def stats():
        return {"requests": state["requests"], "turns": state["turns"], "billed": state["billed"],
                "auth_sha256": state["auth"], "batches": len(state["batches"])}

    # --- Batch API subset: upload JSONL, create a batch, poll it, download the output file. ---
    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)):
        fid = f"file-{uuid.uuid4().hex[:12]}"
        state["files"][fid] = (await file.read()).decode()
        return {"id": fid, "object": "file", "purpose": purpose, "filename": file.filename,
                "bytes": len(state["files"][fid]), "created_at": int(time.time())}

    @app.post("/v1/batches")
    async def create_batch(request: Request):
        body = await request.json()
        bid = f"batch_{uuid.uuid4().hex[:12]}"
        lines = [json.loads(x) for x in state["files"][body["input_file_id"]].splitlines() if x.strip()]
        out, errors = [], []
        for k, line in enumerate(lines, 1):
            if schedule.get("400") and k % int(schedule["400"]) == 0:
                errors.append({"custom_id": line["custom_id"], "response": {"status_code": 400, "body": {
                    "error": {"message": "bad request (injected)"}}}, "error": None})
                continue
            out.append({"custom_id": line["custom_id"], "response": {"status_code": 200,
                                                                      "body": answer(line["body"])}})
        ofid, efid = f"file-{uuid.uuid4().hex[:12]}", f"file-{uuid.uuid4().hex[:12]}"
        state["files"][ofid] = "\n".join(json.dumps(x) for x in out) + "\n"
        state["files"][efid] = "\n".join(json.dumps(x) for x in errors) + "\n"
        state["batches"][bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"],
                                 "input_file_id": body["input_file_id"], "completion_window": "24h",
                                 "status": "in_progress", "output_file_id": ofid,
                                 "error_file_id": efid if errors else None, "created_at": int(time.time()),
                                 "request_counts": {"total": len(lines), "completed": len(out),
                                                    "failed": len(errors)}, "polls": 0}
        return {k: v for k, v in state["batches"][bid].items() if k != "polls"}

    @app.get("/v1/batches/{bid}")
    async def get_batch(bid: str):
        b = state["batches"][bid]
        b["polls"] += 1
        if b["polls"] >= 2:  # one "in_progress" poll first, like a real queue
            b["status"] = "completed"
        return {k: v for k, v in b.items() if k != "polls"}

    @app.get("/v1/files/{fid}/content")
    async def content(fid: str):
        return PlainTextResponse(state["files"][fid])

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--schedule", default="{}", help='JSON: fault -> period, e.g. {"429": 7, "500": 11}')
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--retry-after", default="1.0", help='header value of 429s; "a|b|c" = each in turn')
    p.add_argument("--timeout-sleep", type=float, default=5.0)
    a = p.parse_args()
    app = build_app(json.loads(a.schedule), a.latency, a.retry_after, a.timeout_sleep)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
