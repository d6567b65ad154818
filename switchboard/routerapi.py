"""The CLI's side of the router's HTTP API: where the router is and which key to send (flags,
then ``SWITCHBOARD_*``), one call, and every way it can fail as one line.

Exceptions: :class:`CliError` is anything the user can fix and :func:`switchboard.cli.main`
prints as one line; :class:`Unreachable` (a :class:`CliError`) is no HTTP answer at all, which
``status --watch`` shows and retries rather than exits on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit


class CliError(Exception):
    """A failure the user can fix: :func:`main` prints it as one line and exits 1."""


class Unreachable(CliError):
    """No HTTP answer from the router at all (refused, unresolvable, timed out, hung up)."""


class Refused(CliError):
    """An HTTP error answer; ``status`` says whether asking again may help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        # the router or its Redis is busy or restarting; a wrong key or URL stays wrong
        return self.status >= 500 or self.status in (408, 429)


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def error_detail(raw: bytes) -> str:
    """The router's ``{"error", "message"}`` body as its message; anything else as it is."""
    text = raw.decode(errors="replace")
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return one_line(message if isinstance(message, str) and message else text, 300)


def call(url: str, key: str, method: str, body: object | None = None,
         timeout: float = 10.0) -> object:
    """The router's JSON answer to one request; :class:`CliError` for anything else."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise Refused(exc.code, f"router answered {exc.code}: {error_detail(exc.read())}"
                      ) from None
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot reach the router at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, broken answers
        raise Unreachable(f"no answer from the router at {url}: "
                          f"{str(exc) or type(exc).__name__}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"the answer from {url} is not JSON: is that a Switchboard router?"
                       ) from None


def header_problem(value: str) -> str | None:
    """Why ``value`` cannot go in an HTTP header as it is, or None."""
    for i, ch in enumerate(value):
        if ch in "\r\n":
            return f"contains a line break (character {i + 1})"
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"contains a control character (character {i + 1})"
        if ord(ch) > 0x7E:
            return f"contains a non-ASCII character (character {i + 1})"
    return None


def api_key(args: argparse.Namespace) -> str:
    """``--api-key``, else ``SWITCHBOARD_API_KEY``, else the first of ``SWITCHBOARD_API_KEYS``."""
    key: str
    if args.api_key:
        key, source = args.api_key, "--api-key"
    elif os.environ.get("SWITCHBOARD_API_KEY"):
        key, source = os.environ["SWITCHBOARD_API_KEY"], "SWITCHBOARD_API_KEY"
    else:
        key = os.environ.get("SWITCHBOARD_API_KEYS", "").split(",")[0]
        source = "SWITCHBOARD_API_KEYS"
    key = key.strip()  # as the router strips its keys and the credentials it is sent
    if not key:
        raise CliError("no API key: pass --api-key or set SWITCHBOARD_API_KEY "
                       "(or SWITCHBOARD_API_KEYS)")
    problem = header_problem(key)
    if problem is not None:
        raise CliError(f"the API key from {source} {problem}; API keys are printable ASCII")
    return key


def target(args: argparse.Namespace) -> tuple[str, str]:
    """The router's base URL (``--router``, ``SWITCHBOARD_ROUTER_URL``) and the API key."""
    base: str
    if args.router:
        base, source = args.router, "--router"
    else:
        base = os.environ.get("SWITCHBOARD_ROUTER_URL", "") or "http://127.0.0.1:8000"
        source = "SWITCHBOARD_ROUTER_URL"
    base = base.strip()
    try:
        parts = urlsplit(base)
        _ = parts.port  # ValueError for a port that is not a number in range
    except ValueError as exc:
        raise CliError(f"{source} is not a valid URL ({exc}): {base!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{source} must be an http:// or https:// URL such as "
                       f"http://127.0.0.1:8000, not {base!r}")
    if any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in base):
        raise CliError(f"{source} must be plain ASCII without spaces (percent-encode the "
                       f"rest): {base!r}")
    return base.rstrip("/"), api_key(args)


def cluster_table(base: str, key: str, timeout: float = 10.0) -> str:
    """``GET /v1/cluster`` as :func:`switchboard.status.render` draws it."""
    cluster = call(base + "/v1/cluster", key, "GET", timeout=timeout)
    from switchboard.status import render

    try:
        return render(cluster)
    except ValueError as exc:
        raise CliError(f"unexpected answer from {base}/v1/cluster: {exc}") from None
