"""The ``switchboard`` command.

Subcommands: ``up`` (local cluster), ``gateway``, ``router``, ``token``, ``publish``,
``status``. Process entry points import lazily so ``switchboard token`` stays instant.

Errors (bad flags or environment, an unreachable or odd router, a port in use) are one line
on stderr and exit status 1, or 2 for a bad command line. The servers check what they can
before they start (settings, the Redis URL, that they can listen) so that a mistake is a line,
not a traceback from deep in the event loop; an unreachable Redis is not a mistake for them:
they keep running, log each failed attempt in a line and answer 503 on /readyz until it is
back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

from switchboard import __version__, routerapi, settings_cli, watch
from switchboard.config import GatewaySettings, RouterSettings, WebhookSettings
from switchboard.routerapi import CliError, one_line

# Commands that talk to a cluster and exit: every failure is one line. The others run
# processes, where an error we did not anticipate is a bug and keeps its traceback.
CLIENT_COMMANDS = frozenset({"token", "publish", "status"})
# Exceptions of a process's start (address in use, unreadable key file, bad URL): one line.
STARTUP_ERRORS = (OSError, ValueError, ArithmeticError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage block (subcommand parsers inherit this)."""
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not watch.MIN_INTERVAL <= seconds <= watch.MAX_INTERVAL:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be {watch.MIN_INTERVAL:g} to "
                                         f"{watch.MAX_INTERVAL:g} seconds, got {text}")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="switchboard", description="Run a Switchboard cluster and talk to "
                     "it. Errors are one line on stderr and exit status 1, or 2 for a bad "
                     "command line.")
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a local cluster: Redis, gateways, router")
    up.add_argument("--redis", default=None, help="use this Redis URL instead of a private one "
                    "(env SWITCHBOARD_REDIS_URL)")
    up.add_argument("--redis-shards", type=int, default=None, metavar="N",
                    help="start a private Redis Cluster of N masters and N replicas instead "
                    "of one redis-server (N >= 3; env SWITCHBOARD_REDIS_SHARDS; default 0: "
                    "one redis-server)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--port", type=_port_number, default=None,
                    help="gateway port (env SWITCHBOARD_PORT; default 8080)")
    up.add_argument("--router-port", type=_port_number, default=None,
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

    whk = sub.add_parser("webhooks", help="run a webhook dispatcher (docs/webhooks.md)")
    settings_cli.add_arguments(whk, WebhookSettings)

    tok = sub.add_parser("token", help="mint a client JWT (HS256)")
    tok.add_argument("--user", required=True)
    tok.add_argument("--channels", default="", help="comma-separated channels or prefix* patterns")
    tok.add_argument("--publish", default="", help="comma-separated channels it may publish to")
    tok.add_argument("--presence", default="", help="comma-separated channels (or prefix* "
                     "patterns) whose joins and leaves it announces and receives")
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

    st = sub.add_parser("status", help="print the cluster's gateways",
                        description="Print the cluster's gateways: one row each, and a total.")
    st.add_argument("--router", default=None, help="router URL (env SWITCHBOARD_ROUTER_URL)")
    st.add_argument("--api-key", default=None, help="env SWITCHBOARD_API_KEY")
    st.add_argument("--watch", action="store_true",
                    help="refresh until Ctrl-C (exit status 0): in place on a terminal; when "
                    "stdout is not a terminal each snapshot is printed whole, after a title "
                    "line. While the router cannot be reached, one line says so and the next "
                    "refresh tries again")
    st.add_argument("--interval", type=_interval, default=None, metavar="SECONDS",
                    help=f"seconds between refreshes with --watch ({watch.MIN_INTERVAL:g} to "
                    f"{watch.MAX_INTERVAL:g}; default {watch.DEFAULT_INTERVAL:g})")
    st.add_argument("--count", type=_positive_int, default=None, metavar="N",
                    help="with --watch, stop after N refreshes; the exit status is then 0 if "
                    "the last one had an answer and 1 if not")
    return parser


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
    watched = [c.strip() for c in args.presence.split(",") if c.strip()]
    try:
        secret.encode()
    except UnicodeError:
        raise CliError("the JWT secret is not valid UTF-8") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = mint(secret, args.user, ttl=args.ttl, channels=split, publish=pubs,
                     presence=watched)
    for w in caught:  # PyJWT's short-key warning, say: one line, not a source excerpt
        print(f"switchboard token: warning: {one_line(str(w.message))}", file=sys.stderr)
    print(token)
    return 0


def _check_redis_url(url: str, source: str = "--redis-url or SWITCHBOARD_REDIS_URL") -> None:
    """What the backplane would refuse later, inside the event loop (no URL in the message:
    it may hold a password)."""
    from switchboard.redisurl import is_cluster, parse_cluster

    try:
        if is_cluster(url):
            parse_cluster(url)
        else:
            from redis.connection import parse_url

            parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise CliError(f"invalid Redis URL ({source}): {exc}") from None


def _check_listen(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Bind once as the server will (the gateway's options), so that a port in use or a host
    that is not this machine's is one line before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # other gateways on the port are then expected, not a conflict
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise CliError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def _gateway(args: argparse.Namespace) -> int:
    settings = settings_cli.build(GatewaySettings, args)
    _check_redis_url(settings.redis_url)
    _check_listen(settings.host, settings.port, reuse_port=settings.reuse_port)
    from gateway.app import run as run_gateway

    return run_gateway(settings)


def _webhooks(args: argparse.Namespace) -> int:
    settings = settings_cli.build(WebhookSettings, args)
    _check_redis_url(settings.redis_url)
    if not settings.webhook_url:
        raise CliError("no receiver: set --webhook-url or SWITCHBOARD_WEBHOOK_URL")
    _check_listen(settings.host, settings.webhook_port)
    from switchboard.webhooks.main import run as run_webhooks

    return run_webhooks(settings)


def _router(args: argparse.Namespace) -> int:
    settings = settings_cli.build(RouterSettings, args)
    _check_redis_url(settings.redis_url)
    _check_listen(settings.host, settings.router_port)
    from router.main import run as run_router

    return run_router(settings)


def _up(args: argparse.Namespace) -> int:
    from switchboard import supervisor

    # The supervisor checks these again; here it happens before it logs anything, so a bad
    # flag or variable, or a port in use, is the only line printed.
    cfg = supervisor.resolve(args, os.environ, new_secret=lambda: "unused")
    if cfg.redis_url is not None:
        _check_redis_url(cfg.redis_url, "--redis or SWITCHBOARD_REDIS_URL")
    for port in (cfg.port, cfg.router_port):
        _check_listen(cfg.host, port)
    return int(supervisor.run(args))


def _status(args: argparse.Namespace) -> int:
    base, key = routerapi.target(args)
    if not args.watch:
        print(routerapi.cluster_table(base, key))
        return 0
    interval = args.interval or watch.DEFAULT_INTERVAL
    # A router that hangs must not stall the screen for long past the next refresh.
    timeout = min(10.0, max(1.0, interval))

    def fetch() -> tuple[bool, str]:
        try:
            return True, routerapi.cluster_table(base, key, timeout)
        except routerapi.Unreachable as exc:
            return False, f"router unreachable: {exc}; retrying every {interval:g}s"
        except routerapi.Refused as exc:
            if not exc.transient:  # a wrong key or URL: asking again will not help
                raise
            return False, f"no status: {exc}; retrying every {interval:g}s"

    def title() -> str:
        return f"switchboard status  {base}  every {interval:g}s  {time.strftime('%H:%M:%S')}"

    tty = sys.stdout.isatty()
    try:
        return watch.run(fetch, sys.stdout, title=title, interval=interval, count=args.count,
                         tty=tty, rows=lambda: shutil.get_terminal_size().lines if tty else None)
    except BrokenPipeError:  # `status --watch | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "gateway":
        return _gateway(args)
    if args.command == "router":
        return _router(args)
    if args.command == "webhooks":
        return _webhooks(args)
    if args.command == "up":
        return _up(args)
    if args.command == "token":
        return _token(args)
    if args.command == "publish":
        base, key = routerapi.target(args)
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
        print(json.dumps(routerapi.call(base + "/v1/publish", key, "POST", body)))
        return 0
    if args.command == "status":
        return _status(args)
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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "status" and not args.watch:
        for flag in ("interval", "count"):
            if getattr(args, flag) is not None:
                parser.exit(2, f"switchboard status: error: --{flag} needs --watch "
                            "(see switchboard status --help)\n")
    try:
        return _run(args)
    except CliError as exc:
        return _fail(args, str(exc))
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message (settings, start-up checks): one line
            print(one_line(exc.code), file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:  # before a server's own handler is installed, or a client's wait
        return _fail(args, "interrupted", 130)
    except Exception as exc:
        if args.command not in CLIENT_COMMANDS and not isinstance(exc, STARTUP_ERRORS):
            raise
        return _fail(args, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
