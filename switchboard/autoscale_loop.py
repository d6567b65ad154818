"""The autoscaler's I/O for ``switchboard up``: read the registry, decide, log.

:class:`AutoscaleLoop` is called from the supervisor's loop; every ``interval`` seconds it
reads the registry hashes of the gateways *this supervisor* runs, asks the pure
:class:`~switchboard.autoscale.Autoscaler`, and returns its decision for the supervisor to
carry out (start gateways, or SIGTERM the ones to drain). It reads only its own gateways, by
id, rather than every gateway registered: with ``--redis`` the Redis may be shared with other
clusters, whose gateways this supervisor must neither count nor try to drain.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import redis
from redis.exceptions import RedisClusterException

from switchboard.autoscale import (
    DEFAULT_MAX,
    DEFAULT_MIN,
    DEFAULT_TARGET_CONNECTIONS,
    DEFAULT_WINDOW,
    Autoscaler,
    Decision,
    GatewayLoad,
    Policy,
)
from switchboard.contract import Keys

log = logging.getLogger("switchboard.autoscale")

INTERVAL = 2.0  # seconds between looks: about one gateway heartbeat


def policy_from_args(args: argparse.Namespace) -> Policy | None:
    """The policy ``up``'s flags ask for, or None with ``--no-autoscale``.

    Attributes missing from ``args`` take their defaults, so a namespace built by hand (as in
    tests) needs none of the autoscaling flags.
    """
    if getattr(args, "no_autoscale", False):
        return None
    lo = int(getattr(args, "min_gateways", DEFAULT_MIN))
    hi = int(getattr(args, "max_gateways", DEFAULT_MAX))
    target = int(getattr(args, "target_connections", DEFAULT_TARGET_CONNECTIONS))
    window = float(getattr(args, "scale_window", DEFAULT_WINDOW))
    if lo < 1:
        raise SystemExit("switchboard: --min must be at least 1")
    if hi < lo:
        raise SystemExit("switchboard: --max must be at least --min")
    if target < 1:
        raise SystemExit("switchboard: --target-connections must be at least 1")
    if window < 0:
        raise SystemExit("switchboard: --scale-window must not be negative")
    return Policy(min_replicas=lo, max_replicas=hi, target_connections=target,
                  stabilization_window=window)


def describe_policy(policy: Policy | None) -> str:
    if policy is None:
        return "off (--no-autoscale)"
    return (f"{policy.min_replicas}-{policy.max_replicas} gateways, "
            f"{policy.target_connections} connections each, scale-in after "
            f"{policy.stabilization_window:g} s")


class AutoscaleLoop:
    def __init__(self, policy: Policy, registry: redis.Redis, keys: Keys,
                 interval: float = INTERVAL) -> None:
        self.autoscaler = Autoscaler(policy)
        self.registry = registry
        self.keys = keys
        self.interval = interval
        self._next = 0.0
        self._last_logged: tuple[object, ...] = ()

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def read(self, gateways: Sequence[tuple[str, bool]]) -> list[GatewayLoad]:
        """Loads of ``(gateway_id, retiring)`` in the caller's order. A gateway the caller has
        already told to drain counts as draining even before its own heartbeat says so, so one
        slow heartbeat never gets a second gateway drained; one not registered yet (starting)
        counts with no connections."""
        pipe = self.registry.pipeline(transaction=False)
        for gid, _ in gateways:
            pipe.hmget(self.keys.gateway(gid), ["connections", "draining"])
        rows = pipe.execute()
        loads = []
        for (gid, retiring), (conns, draining) in zip(gateways, rows, strict=True):
            loads.append(GatewayLoad(gid, int(conns or 0), retiring or draining == b"1"))
        return loads

    def step(self, gateways: Sequence[tuple[str, bool]], now: float) -> Decision | None:
        """One look; None when the registry cannot be read (the next look tries again)."""
        try:
            loads = self.read(gateways)
        # RedisClusterException: a cluster client's "no master for this slot" during a
        # failover is not a RedisError, and must not end supervise() either.
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            log.warning("autoscaler cannot read the gateway registry: %s", exc)
            return None
        decision = self.autoscaler.decide(loads, now)
        # every action is logged; a hold only when its counts differ from the last decision
        # logged, so a steady cluster does not print a line every two seconds
        key = (decision.action, decision.current, decision.desired, decision.target)
        if decision.action != "hold" or key != self._last_logged:
            log.info("autoscaler: %s", decision.describe())
            self._last_logged = key
        return decision
