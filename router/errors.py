"""Every non-2xx answer of the router, as exceptions that carry their HTTP status.

The body of every error is JSON ``{"error": CODE, "message": TEXT}``, plus ``field`` and
``index`` when one input is to blame. Handlers in :mod:`router.handlers` turn these into
responses; lower-layer errors (redis-py, Starlette, FastAPI) are translated there too.

::

    ApiError
    ├── MalformedBody          400  the body is not a JSON or msgpack object
    ├── Unauthorized           401  missing or unknown API key
    ├── Forbidden              403  a browser (Basic) state change without the admin header
    ├── NotFound               404
    ├── MethodNotAllowed       405
    ├── Conflict               409  the target cannot take the request now (not listening)
    │   └── ReceiptsUnavailable  409  a receipt, where no dispatcher would fire it
    ├── BodyTooLarge           413  Content-Length or the bytes read exceed max_body
    ├── BatchTooLarge          413  more messages than max_batch
    ├── UnsupportedMediaType   415  neither JSON nor msgpack
    ├── InvalidField           422  well-formed, but a field is missing, mistyped or invalid
    ├── TooManyReceipts        429  the user has too many receipts waiting; nothing stored
    ├── InternalError          500  a bug; no details leave the process
    └── RedisUnavailable       503  Redis did not answer; nothing was acknowledged
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from switchboard.untrusted import quotable


class ApiError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.index = index
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        # Every error answer is built here, and message and field may repeat what the caller
        # sent (an unknown field's name): quoted so the answer always encodes.
        out: dict[str, Any] = {"error": self.code, "message": quotable(self.message)}
        if self.field is not None:
            out["field"] = quotable(self.field)
        if self.index is not None:
            out["index"] = self.index
        return out


class MalformedBody(ApiError):
    status = 400
    code = "malformed_body"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid 'Authorization: Bearer API_KEY' is required",
                 challenge: str = "Bearer"):
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class ReceiptsUnavailable(Conflict):
    code = "receipts_unavailable"


class TooManyReceipts(ApiError):
    status = 429
    code = "too_many_receipts"


class BodyTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class BatchTooLarge(ApiError):
    status = 413
    code = "batch_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class InvalidField(ApiError):
    status = 422
    code = "invalid"


class InternalError(ApiError):
    status = 500
    code = "internal"


class RedisUnavailable(ApiError):
    status = 503
    code = "redis_unavailable"

    def __init__(self, message: str = "Redis is unavailable; nothing was published, retry later"):
        super().__init__(message, headers={"Retry-After": "1"})


_CODES = {
    cls.status: cls.code
    for cls in (MalformedBody, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
                BodyTooLarge,
                UnsupportedMediaType, InvalidField, InternalError, RedisUnavailable)
}


def for_status(status: int, message: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """The error for a status Starlette or FastAPI raised by themselves (404, 405, ...)."""
    err = ApiError(message, headers=headers)
    err.status = status if 400 <= status <= 599 else 500
    err.code = _CODES.get(err.status, "error")
    return err
