"""Exception handlers: every error the app or its framework raises becomes JSON.

FastAPI's defaults answer 404/405 with ``{"detail": ...}`` and validation failures with a
list of pydantic errors; ours all answer ``{"error": CODE, "message": TEXT}`` (see
:mod:`router.errors`). A Redis failure that escaped a route's own translation is still a 503,
and a bug is a bare 500 with no details.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from router import errors


def error_response(err: errors.ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ApiError)
    return error_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(errors.for_status(exc.status_code, message, exc.headers))


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
    return error_response(errors.InvalidField(message, field=where or None))


async def on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(errors.RedisUnavailable())


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(errors.InternalError("internal error"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(RedisError, on_redis_error)
    app.add_exception_handler(Exception, on_unexpected)
