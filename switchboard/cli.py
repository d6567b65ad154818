"""The ``switchboard`` command.

Subcommands: ``up`` (local cluster), ``gateway``, ``router``, ``token``, ``publish``,
``status``. Process entry points import lazily so ``switchboard token`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from switchboard import settings_cli
from switchboard.config import GatewaySettings, RouterSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run a local cluster: Redis, gateways, router")
    up.add_argument("--redis", default=None, help="use this Redis URL instead of a private one "
                    "(env SWITCHBOARD_REDIS_URL)")
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
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise SystemExit(f"switchboard: router answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"switchboard: cannot reach the router at {url}: {exc.reason}") from None


def _router_defaults(args: argparse.Namespace) -> tuple[str, str]:
    base = args.router or os.environ.get("SWITCHBOARD_ROUTER_URL", "http://127.0.0.1:8000")
    key = args.api_key or os.environ.get("SWITCHBOARD_API_KEY", "")
    if not key:
        keys = os.environ.get("SWITCHBOARD_API_KEYS", "")
        key = keys.split(",")[0].strip()
    return base.rstrip("/"), key


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        from switchboard.auth import mint

        secret = args.jwt_secret or os.environ.get("SWITCHBOARD_JWT_SECRET", "")
        if not secret:
            raise SystemExit("switchboard: --jwt-secret or SWITCHBOARD_JWT_SECRET is required")
        split = [c.strip() for c in args.channels.split(",") if c.strip()]
        pubs = [c.strip() for c in args.publish.split(",") if c.strip()]
        print(mint(secret, args.user, ttl=args.ttl, channels=split, publish=pubs))
        return 0
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

        print(render(cluster))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
