"""HTTP plumbing: HTTP Basic on every route (A1111's --api-auth), the request-body limit, and every error as JSON
``{"error": <status phrase>, "detail": <one line naming the input and the fix>}`` — FastAPI's type errors (422)
included, their list kept in ``errors``."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from http import HTTPStatus
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .catalog import ModelNotFound
from .worker import QueueFull

log = logging.getLogger("latentdiff.serve")
MAX_ERRORS_NAMED = 3  # a type error's one-line detail names at most this many fields


def error_response(status: int, detail: str, headers: Optional[dict] = None, **extra) -> JSONResponse:
    return JSONResponse({"error": HTTPStatus(status).phrase, "detail": detail, **extra}, status, headers=headers)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over this server's limit of {limit / 2**20:g} MiB "
                              "(max_body_mb); send smaller images or fewer of them")


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once from Content-Length, or while a chunked body streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await error_response(413, BodyTooLarge(self.limit).detail)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


class BasicAuth:
    """HTTP Basic on every request but CORS preflights; 401 with ``WWW-Authenticate`` otherwise."""

    def __init__(self, app, credentials: dict[str, str]):
        self.app, self.credentials = app, credentials

    def allowed(self, header: Optional[bytes]) -> bool:
        if not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = self.credentials.get(user)
        same = secrets.compare_digest(password.encode(), (expected or "").encode())
        return same and expected is not None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"] == "OPTIONS" and
                                       b"access-control-request-method" in dict(scope["headers"])):
            return await self.app(scope, receive, send)
        if not self.allowed(dict(scope["headers"]).get(b"authorization")):
            response = error_response(401, "missing or wrong credentials; this server needs HTTP Basic auth "
                                           "(user and password of its --api-auth)",
                                      headers={"WWW-Authenticate": 'Basic realm="latentdiff"'})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _where(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _one_line(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        errors = error.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            reason = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error_response(400, f"the request body is not valid JSON ({reason}); send a JSON object")
        whole = [e for e in errors if tuple(e["loc"]) == ("body",)]
        if whole:
            if whole[0].get("type") == "missing":
                return error_response(400, "the request body is empty; send a JSON object")
            return error_response(400, f"the request body must be a JSON object sent with Content-Type: "
                                       f"application/json (got {_one_line(whole[0].get('input'))})")
        named = [f"{_where(e['loc'])}: {e['msg']}" + (f" (got {_one_line(e['input'])})" if "input" in e and
                                                       e.get("type") != "missing" else "")
                 for e in errors[:MAX_ERRORS_NAMED]]
        more = f" (and {len(errors) - MAX_ERRORS_NAMED} more)" if len(errors) > MAX_ERRORS_NAMED else ""
        listed = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return error_response(422, "; ".join(named) + more, errors=listed)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(ModelNotFound)
    async def not_found(request: Request, error: ModelNotFound):
        return error_response(404, str(error))

    @app.exception_handler(ValueError)
    async def mistake(request: Request, error: ValueError):  # the library's user mistakes: one-line ValueErrors
        return error_response(422, str(error))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, error: QueueFull):
        return error_response(503, str(error), headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return error_response(500, f"the server failed: {type(error).__name__}: {error}")
