"""The ``switchboard`` command.

Subcommands: ``up`` (local cluster), ``gateway``, ``router``, ``token``, ``publish``,
``status``. Process entry points import lazily so ``switchboard token`` stays instant.

Errors (bad flags or environment, an unreachable or odd router) are one line on stderr and
exit status 1, or 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn
from urllib.parse import urlsplit

from switchboard import settings_cli
from switchboard.config import GatewaySettings, RouterSettings

# Commands that talk to a cluster and exit: every failure is one line. The others run
# processes, where an error we did not anticipate is a bug and keeps its traceback.
CLIENT_COMMANDS = frozenset({"token", "publish", "status"})
# Exceptions of a process's start (address in use, unreadable key file, bad URL): one line.
STARTUP_ERRORS = (OSError, ValueError, ArithmeticError)


class CliError(Exception):
    """A failure the user can fix: :func:`main` prints it as one line and exits 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage block (subcommand parsers inherit this)."""
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="switchboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a local cluster: Redis, gateways, router")
    up.add_argument("--redis", default=None, help="use this Redis URL instead of a private one "
                    "(env SWITCHBOARD_REDIS_URL)")
    up.add_argument("--redis-shards", type=int, default=None, metavar="N",
                    help="start a private Redis Cluster of N masters and N replicas instead "
                    "of one redis-server (N >= 3; env SWITCHBOARD_REDIS_SHARDS; default 0: "
                    "one redis-server)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--port", type=int, default=None, help="gateway port (env SWITCHBOARD_PORT; "
                    "default 8080)")
    up.add_argument("--router-port", type=int, default=None,
                    help="router port (env SWITCHBOARD_ROUTER_PORT; default 8000)")
    up.add_argument("--gateways", type=int, default=2, help="gateways sharing the port at start "
                    "(clamped to [--min, --max] unless --no-autoscale)")
    up.add_argument("--min", dest="min_gateways", type=int, default=1,
                    help="fewest gateways the autoscaler keeps")
    up.add_argument("--max", dest="max_gateways", type=int, default=4,
                    help="most gateways the autoscaler starts")
    up.add_argument("--target-connections", type=int, default=1000,
                    help="connections per gateway the autoscaler aims for")
    up.add_argument("--scale-window", type=float, default=60.0,
                    help="seconds the load must stay low before a gateway is drained")
    up.add_argument("--no-autoscale", action="store_true",
                    help="keep --gateways gateways whatever the load")
    up.add_argument("--jwt-secret", default=None, help="HS256 secret (random if unset; env "
                    "SWITCHBOARD_JWT_SECRET)")
    up.add_argument("--api-key", default=None, help="router API key (random if unset; env "
                    "SWITCHBOARD_API_KEYS)")

    gw = sub.add_parser("gateway", help="run one gateway process")
    settings_cli.add_arguments(gw, GatewaySettings)

    rt = sub.add_parser("router", help="run one router process")
    settings_cli.add_arguments(rt, RouterSettings)

    tok = sub.add_parser("token", help="mint a client JWT (HS256)")
    tok.add_argument("--user", required=True)
    tok.add_argument("--channels", default="", help="comma-separated channels or prefix* patterns")
    tok.add_argument("--publish", default="", help="comma-separated channels it may publish to")
    tok.add_argument("--ttl", type=float, default=24 * 3600.0, help="seconds until expiry")
    tok.add_argument("--jwt-secret", default=None, help="env SWITCHBOARD_JWT_SECRET")

    pub = sub.add_parser("publish", help="publish through the router")
    target = pub.add_mutually_exclusive_group(required=True)
    target.add_argument("--user")
    target.add_argument("--channel")
    target.add_argument("--broadcast", action="store_true")
    pub.add_argument("data", help="JSON value (a bare word is sent as a string)")
    pub.add_argument("--router", default=None, help="router URL (env SWITCHBOARD_ROUTER_URL; "
                     "default http://127.0.0.1:8000)")
    pub.add_argument("--api-key", default=None, help="env SWITCHBOARD_API_KEY")

    st = sub.add_parser("status", help="print the cluster's gateways")
    st.add_argument("--router", default=None, help="router URL (env SWITCHBOARD_ROUTER_URL)")
    st.add_argument("--api-key", default=None, help="env SWITCHBOARD_API_KEY")
    return parser


def _router_call(url: str, api_key: str, method: str, body: object | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {api_key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise CliError(f"router answered {exc.code}: {one_line(detail, 300)}") from None
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the router at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, broken answers
        raise CliError(f"no answer from the router at {url}: "
                       f"{str(exc) or type(exc).__name__}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"the answer from {url} is not JSON: is that a Switchboard router?"
                       ) from None


def _header_problem(value: str) -> str | None:
    """Why ``value`` cannot go in an HTTP header as it is, or None."""
    for i, ch in enumerate(value):
        if ch in "\r\n":
            return f"contains a line break (character {i + 1})"
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"contains a control character (character {i + 1})"
        if ord(ch) > 0x7E:
            return f"contains a non-ASCII character (character {i + 1})"
    return None


def _api_key(args: argparse.Namespace) -> str:
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
    problem = _header_problem(key)
    if problem is not None:
        raise CliError(f"the API key from {source} {problem}; API keys are printable ASCII")
    return key


def _router_defaults(args: argparse.Namespace) -> tuple[str, str]:
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
    return base.rstrip("/"), _api_key(args)


def _token(args: argparse.Namespace) -> int:
    from switchboard import streams
    from switchboard.auth import mint

    secret = args.jwt_secret or os.environ.get("SWITCHBOARD_JWT_SECRET", "")
    if not secret:
        raise CliError("--jwt-secret or SWITCHBOARD_JWT_SECRET is required")
    if not streams.valid_user(args.user):
        raise CliError(f"--user {args.user!r} is not a valid user id")
    if not math.isfinite(args.ttl) or args.ttl <= 0:
        raise CliError(f"--ttl must be a positive number of seconds, not {args.ttl}")
    split = [c.strip() for c in args.channels.split(",") if c.strip()]
    pubs = [c.strip() for c in args.publish.split(",") if c.strip()]
    try:
        secret.encode()
    except UnicodeError:
        raise CliError("the JWT secret is not valid UTF-8") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = mint(secret, args.user, ttl=args.ttl, channels=split, publish=pubs)
    for w in caught:  # PyJWT's short-key warning, say: one line, not a source excerpt
        print(f"switchboard token: warning: {one_line(str(w.message))}", file=sys.stderr)
    print(token)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "gateway":
        from gateway.app import run as run_gateway

        return run_gateway(settings_cli.build(GatewaySettings, args))
    if args.command == "router":
        from router.main import run as run_router

        return run_router(settings_cli.build(RouterSettings, args))
    if args.command == "up":
        from switchboard.supervisor import run as run_up

        return int(run_up(args))
    if args.command == "token":
        return _token(args)
    if args.command == "publish":
        base, key = _router_defaults(args)
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError:
            data = args.data
        body: dict[str, object] = {"data": data}
        if args.user:
            body["user"] = args.user
        elif args.channel:
            body["channel"] = args.channel
        else:
            body["broadcast"] = True
        print(json.dumps(_router_call(base + "/v1/publish", key, "POST", body)))
        return 0
    if args.command == "status":
        base, key = _router_defaults(args)
        cluster = _router_call(base + "/v1/cluster", key, "GET")
        from switchboard.status import render

        try:
            text = render(cluster)
        except ValueError as exc:
            raise CliError(f"unexpected answer from {base}/v1/cluster: {exc}") from None
        print(text)
        return 0
    return 2


def _secrets(args: argparse.Namespace) -> Iterator[str]:
    """Values an error line must not show, should one turn up in an exception's text."""
    env = os.environ
    yield from (getattr(args, "api_key", None) or "", getattr(args, "jwt_secret", None) or "",
                env.get("SWITCHBOARD_API_KEY", ""), env.get("SWITCHBOARD_JWT_SECRET", ""))
    yield from env.get("SWITCHBOARD_API_KEYS", "").split(",")


def _fail(args: argparse.Namespace, message: str, status: int = 1) -> int:
    text = one_line(message)
    for secret in sorted({s.strip() for s in _secrets(args)}, key=len, reverse=True):
        if len(secret) >= 6:
            text = text.replace(secret, "***")
    print(f"switchboard {args.command}: {text}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary: whatever fails below becomes one line on stderr."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CliError as exc:
        return _fail(args, str(exc))
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message (settings, start-up checks): one line
            print(one_line(exc.code), file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        if args.command not in CLIENT_COMMANDS:
            raise
        return _fail(args, "interrupted", 130)
    except Exception as exc:
        if args.command not in CLIENT_COMMANDS and not isinstance(exc, STARTUP_ERRORS):
            raise
        return _fail(args, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
