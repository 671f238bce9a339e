"""The request guard of the Serve app: host, auth and body-size checks in front of every route, and every error in
one shape, `{"error": message, "field": where}` (slim/serve/app.py installs both on its FastAPI app)."""

from __future__ import annotations

import json
import sys
from collections import deque
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slim.serve.schemas import FieldError
from slim.serve.settings import Secret

OPEN_PATHS = ("/", "/healthz", "/openapi.json", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css")
AUTHORIZED = "slim.authorized"  # the ASGI scope key where the guard leaves whether the request carries the token


def was_authorized(request: Request) -> bool:
    """Whether the guard found the request's token good (or none configured): a route asks this, not the token."""
    return bool(request.scope.get(AUTHORIZED, False))


def limits() -> dict:
    """The replica's limits, set by its deployment instance (one per process). Imported at call time: Serve ships
    the FastAPI app (and so this module's functions) by value, with a copy of this module's globals, so a global
    here would not be the one the instance sets."""
    from slim.serve import settings

    return settings.GUARD


def error(status: int, field: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware in front of every route: a Host header not in serve.allowed_hosts (when set) gets 400 (a page
    reached through someone else's DNS name cannot call the API); bodies over max_body_bytes get 413 (checked on the
    declared length and again on the bytes received, so a chunked upload cannot pass it), and when a token is
    configured, requests other than the page, health and schema need `Authorization: Bearer <token>` (401
    otherwise). Answers to allowed requests name the model in X-Slim-Model."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scope[AUTHORIZED] = ok = authorized(headers)  # the token compared once per request; routes read this
        refused = self._host(headers) or self._auth(scope, ok)
        if refused is None:
            refused, receive = await self._body(headers, receive)
        if refused is not None:
            return await refused(scope, receive, send)
        return await self.app(scope, receive, _named(send) if ok else send)

    def _host(self, headers: dict) -> Optional[JSONResponse]:
        allowed = limits()["allowed_hosts"]
        if not allowed:
            return None
        host = headers.get("host", "").strip().lower()
        name = host[:host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]  # without the port
        if name in allowed:
            return None
        return error(400, "host", f"host {host[:100]!r} is not in serve.allowed_hosts")

    def _auth(self, scope, ok: bool) -> Optional[JSONResponse]:
        path, root = scope["path"], scope.get("root_path", "")
        path = (path[len(root):] if root and path.startswith(root) else path) or "/"
        if ok or path in OPEN_PATHS:
            return None
        return error(401, "authorization", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def _body(self, headers: dict, receive):
        limit = limits()["max_body_bytes"]
        too_big = error(413, "body", f"request body over {limit} bytes (serve.max_body_bytes)")
        declared = headers.get("content-length", "0")
        if not declared.isdigit():
            return error(400, "content-length", f"not a byte count: {declared[:40]!r}"), receive
        if int(declared) > limit:
            return too_big, receive
        messages, size, more = [], 0, True
        while more:
            m = await receive()
            messages.append(m)
            size += len(m.get("body", b""))
            more = m.get("more_body", False) and m["type"] == "http.request"
            if size > limit:
                return too_big, receive

        async def replay():
            return messages.pop(0) if messages else await receive()

        return None, replay


def _named(send):
    """`send` with the X-Slim-Model header (the replica's run and checkpoint) on the response: which model answered,
    also while a swap moves the endpoint from one to another (shown only to those allowed to call the API)."""
    model = limits()["model"].encode()

    async def named(message):
        if message["type"] == "http.response.start" and model:
            message = {**message, "headers": [*message.get("headers", []), (b"x-slim-model", model)]}
        await send(message)

    return named


def authorized(headers) -> bool:
    """True when no token is configured, or the request carries it (`Authorization: Bearer <token>`). `headers`:
    lower-case names (a dict, or a request's headers)."""
    token: Optional[Secret] = limits()["token"]
    if token is None:
        return True
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token.matches(presented.strip())


def _field(loc) -> str:
    """("body", "history", 0, "int") -> "history[0]": where the error is, without pydantic's union-member tags."""
    parts = [p for p in loc if p not in ("body", "query", "path", "int", "str")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


async def _invalid(request: Request, exc: RequestValidationError):
    e = exc.errors()[0]
    field = "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ()))
    return error(422, field, e.get("msg", "invalid"))


async def _http(request: Request, exc: StarletteHTTPException):
    """Starlette's and FastAPI's own errors in the API's shape. A 400 is FastAPI failing to read the body as JSON
    for a reason json.loads does not report as a decode error: a 422 naming the body, with that reason."""
    if exc.status_code != 400:
        return error(exc.status_code, "path" if exc.status_code in (404, 405) else "request", str(exc.detail),
                      getattr(exc, "headers", None))
    cause = exc.__cause__
    if type(cause) is ValueError and "integer string conversion" in str(cause):
        return _long_integer(await request.body())
    why = {UnicodeDecodeError: "not UTF-8 text", RecursionError: "JSON nested too deeply"}.get(type(cause))
    if why is None:
        why = type(cause).__name__ if cause is not None else str(exc.detail)
    return error(422, "body", f"not a JSON body: {why}")


class _LongInt(str):
    """A JSON integer with more digits than Python converts (sys.get_int_max_str_digits(), 4,300)."""


def _long_integer(body: bytes) -> JSONResponse:
    """A 422 naming the field of the first integer too long to convert (json.loads refuses it with a ValueError
    that names no field): the body parsed again with such integers kept as text, and searched for them."""
    most = sys.get_int_max_str_digits() or 4300
    try:
        doc = json.loads(body, parse_int=lambda s: _LongInt(s) if len(s.lstrip("-")) > most else int(s))
    except (ValueError, RecursionError):
        return error(422, "body", "not a JSON body: an integer too long to read")
    todo = deque([(doc, ())])
    while todo:  # breadth first, no recursion: the body may be deeply nested
        v, loc = todo.popleft()
        if isinstance(v, _LongInt):
            return error(422, _field(loc), f"an integer of {len(v.lstrip('-')):,} digits ({v[:12]}...): over the "
                         f"{most:,} digits a number may have")
        if isinstance(v, dict):
            todo.extend((x, (*loc, k)) for k, x in v.items())
        elif isinstance(v, list):
            todo.extend((x, (*loc, i)) for i, x in enumerate(v))
    return error(422, "body", "not a JSON body: an integer too long to read")


async def _bad_field(request: Request, exc: FieldError):
    return error(exc.status, exc.field, exc.message)


def install(api: FastAPI) -> None:
    """The guard in front of every route of `api`, and its error handlers."""
    api.add_middleware(Guard)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(StarletteHTTPException, _http)
    api.add_exception_handler(FieldError, _bad_field)
