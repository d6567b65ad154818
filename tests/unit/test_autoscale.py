"""The autoscaler's decisions (the HPA rule), driven by an injected clock."""

from __future__ import annotations

import argparse
import signal
import sys

import pytest

from switchboard.autoscale import Autoscaler, Decision, GatewayLoad, Policy
from switchboard.autoscale_loop import AutoscaleLoop, policy_from_args
from switchboard.children import Child
from switchboard.contract import Keys
from switchboard.supervisor import Supervisor, UpConfig, resolve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def loads(*counts: int, draining: tuple[int, ...] = ()) -> list[GatewayLoad]:
    """Gateways gw0, gw1, ... in start order with these connection counts."""
    return [GatewayLoad(f"gw{i}", n, i in draining) for i, n in enumerate(counts)]


def scaler(window: float = 10.0, lo: int = 1, hi: int = 4, target: int = 100) -> Autoscaler:
    return Autoscaler(Policy(min_replicas=lo, max_replicas=hi, target_connections=target,
                             stabilization_window=window))


def test_the_recommendation_is_the_hpa_formula_within_bounds() -> None:
    policy = Policy(min_replicas=2, max_replicas=5, target_connections=100)
    assert [policy.recommend(n) for n in (0, 1, 100, 101, 200, 201, 450, 10_000)] == [
        2, 2, 2, 2, 2, 3, 5, 5]
    assert Policy(min_replicas=1, target_connections=1).recommend(3) == 3


def test_a_spike_scales_out_at_once() -> None:
    clock, auto = Clock(), scaler()
    assert auto.decide(loads(50), clock.now).action == "hold"
    d = auto.decide(loads(250), clock.advance(2))
    assert (d.action, d.current, d.desired, d.target, d.drain) == ("scale_out", 1, 3, 3, ())


def test_scale_out_is_capped_at_max() -> None:
    clock, auto = Clock(), scaler(hi=3)
    d = auto.decide(loads(900, 900), clock.now)
    assert (d.action, d.target) == ("scale_out", 3)
    assert auto.decide(loads(600, 600, 600), clock.advance(2)).action == "hold"


def test_a_brief_dip_does_not_flap() -> None:
    clock, auto = Clock(), scaler(window=10)
    auto.decide(loads(150, 150), clock.now)  # 300 -> 3
    assert auto.decide(loads(100, 100, 100), clock.advance(2)).action == "hold"
    for _ in range(4):  # 8 s of low load, shorter than the window
        d = auto.decide(loads(10, 10, 10), clock.advance(2))
        assert (d.action, d.desired, d.target) == ("hold", 1, 3)
        assert "stabilisation" in d.describe()
    # load is back before the window ran out: nothing was drained at any point
    assert auto.decide(loads(100, 100, 100), clock.advance(2)).action == "hold"
    assert auto.decide(loads(10, 10, 10), clock.advance(2)).action == "hold"


def test_scale_in_after_the_window_drains_the_least_loaded() -> None:
    clock, auto = Clock(), scaler(window=10)
    auto.decide(loads(100, 100, 100), clock.now)
    start = clock.now
    while True:
        d = auto.decide(loads(30, 5, 20), clock.advance(1))
        if d.action != "hold":
            break
    # the last recommendation of 3 was made at `start`: 10 s later it left the window
    assert clock.now - start == 10
    assert (d.action, d.target, d.drain) == ("scale_in", 1, ("gw1", "gw2"))
    assert "draining gw1, gw2" in d.describe()


def test_scale_in_goes_only_as_low_as_the_window_allows() -> None:
    clock, auto = Clock(), scaler(window=10)
    auto.decide(loads(100, 100, 100, 100), clock.now)  # 400 -> 4
    auto.decide(loads(100, 100, 0, 0), clock.advance(5))  # 200 -> 2, held
    d = auto.decide(loads(50, 50, 0, 0), clock.advance(5.5))  # the 4 left; the 2 has not
    assert (d.action, d.desired, d.target, d.drain) == ("scale_in", 1, 2, ("gw3", "gw2"))


def test_the_first_look_holds_the_initial_size_for_a_window() -> None:
    clock, auto = Clock(), scaler(window=10)
    assert auto.decide(loads(0, 0), clock.now).action == "hold"
    assert auto.decide(loads(0, 0), clock.advance(9)).action == "hold"
    d = auto.decide(loads(0, 0), clock.advance(1))
    assert (d.action, d.target, d.drain) == ("scale_in", 1, ("gw1",))  # tie: the newest


def test_window_zero_scales_in_immediately() -> None:
    clock, auto = Clock(), scaler(window=0)
    d = auto.decide(loads(0, 0, 0), clock.now)
    assert (d.action, d.target, d.drain) == ("scale_in", 1, ("gw2", "gw1"))
    assert auto.decide(loads(0), clock.advance(0.1)).action == "hold"


def test_draining_gateways_are_not_replicas_but_their_clients_are_demand() -> None:
    clock, auto = Clock(), scaler()
    d = auto.decide(loads(150, 90, draining=(0,)), clock.now)
    # 240 connections -> 3, and only gw1 counts as running
    assert (d.current, d.total_connections, d.action, d.target) == (1, 240, "scale_out", 3)
    d = auto.decide(loads(0, 0, 0, draining=(1,)), clock.advance(100))
    assert d.drain == ("gw2",)  # a draining gateway is never chosen again


def test_below_min_scales_back_up_at_once() -> None:
    clock, auto = Clock(), scaler(lo=2)
    d = auto.decide(loads(0, draining=()), clock.now)
    assert (d.action, d.target) == ("scale_out", 2)
    d = auto.decide(loads(0, 0, draining=(0, 1)), clock.advance(1))
    assert (d.current, d.action, d.target) == (0, "scale_out", 2)


def test_no_gateways_and_no_connections() -> None:
    d = scaler().decide([], 0.0)
    assert (d.current, d.total_connections, d.desired, d.target) == (0, 0, 1, 1)
    assert d.action == "scale_out"


def test_bad_counts_are_not_negative_demand() -> None:
    d = scaler(target=10).decide(loads(-5, 25), 0.0)
    assert (d.total_connections, d.desired) == (25, 3)


def test_history_is_bounded_by_the_window() -> None:
    clock, auto = Clock(), scaler(window=5)
    for _ in range(1000):
        auto.decide(loads(100), clock.advance(1))
    assert len(auto._history) <= 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_connections": 0}, "target_connections"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"stabilization_window": -1}, "stabilization_window"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_min_equal_max_pins_the_count() -> None:
    clock, auto = Clock(), scaler(lo=2, hi=2, window=0)
    assert auto.decide(loads(10_000, 10_000), clock.now).action == "hold"
    assert auto.decide(loads(0, 0), clock.advance(1)).action == "hold"


def test_decisions_describe_themselves() -> None:
    d = Decision(current=1, total_connections=250, desired=3, target=3, drain=())
    assert d.describe() == ("250 connection(s) on 1 gateway(s): recommend 3, "
                            "scaling out to 3")
    assert Decision(current=2, total_connections=150, desired=2, target=2,
                    drain=()).describe().endswith("holding 2")


# -- `switchboard up`: flags, and the supervisor carrying decisions out ---------------------


def up_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"redis": None, "host": "127.0.0.1", "port": None,
                                 "router_port": None, "gateways": 2, "jwt_secret": None,
                                 "api_key": None, "min_gateways": 1, "max_gateways": 4,
                                 "target_connections": 1000, "scale_window": 60.0,
                                 "no_autoscale": False}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_up_flags_become_a_policy_and_clamp_the_initial_count() -> None:
    cfg = resolve(up_args(gateways=9, min_gateways=2, max_gateways=3, target_connections=20,
                          scale_window=3.0), {}, lambda: "s")
    assert cfg.autoscale == Policy(min_replicas=2, max_replicas=3, target_connections=20,
                                   stabilization_window=3.0)
    assert cfg.gateways == 3
    assert resolve(up_args(gateways=1, min_gateways=2), {}, lambda: "s").gateways == 2
    fixed = resolve(up_args(gateways=9, no_autoscale=True), {}, lambda: "s")
    assert (fixed.autoscale, fixed.gateways) == (None, 9)  # no bounds without an autoscaler
    # a namespace without the autoscaling flags (built by hand) gets the defaults
    assert policy_from_args(argparse.Namespace()) == Policy()


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"min_gateways": 0}, "--min"),
        ({"min_gateways": 3, "max_gateways": 2}, "--max"),
        ({"target_connections": 0}, "--target-connections"),
        ({"scale_window": -1.0}, "--scale-window"),
    ],
)
def test_bad_up_flags_are_refused_by_name(flags: dict[str, object], match: str) -> None:
    with pytest.raises(SystemExit, match=match):
        resolve(up_args(**flags), {}, lambda: "s")


class FakeRegistry:
    """Just enough of a sync redis client for AutoscaleLoop.read: HMGET in a pipeline."""

    def __init__(self, rows: dict[str, tuple[int, bool]]) -> None:
        self.rows = rows
        self.keys = Keys()
        self._queued: list[str] = []

    def pipeline(self, transaction: bool = True) -> FakeRegistry:
        return self

    def hmget(self, key: str, fields: list[str]) -> None:
        self._queued.append(key)

    def execute(self) -> list[list[bytes | None]]:
        out: list[list[bytes | None]] = []
        for key in self._queued:
            gid = key.removeprefix(self.keys.gateway(""))
            if gid in self.rows:
                conns, draining = self.rows[gid]
                out.append([str(conns).encode(), b"1" if draining else b"0"])
            else:
                out.append([None, None])  # not registered yet
        self._queued.clear()
        return out


def sleeper(name: str, ident: str) -> Child:
    child = Child(name, lambda c: ([sys.executable, "-c", "import time; time.sleep(60)"], {}),
                  lambda c: True)
    child.ident = ident
    return child


def test_the_supervisor_drains_the_gateway_the_autoscaler_chose() -> None:
    policy = Policy(min_replicas=1, max_replicas=3, target_connections=10,
                    stabilization_window=0)
    cfg = UpConfig(host="127.0.0.1", port=1, router_port=2, gateways=3, redis_url=None,
                   jwt_secret="s", api_keys=("k",), autoscale=policy)
    sup = Supervisor(cfg, {})
    sup.gateways = [sleeper(f"gateway-{i}", f"gw{i}") for i in (1, 2, 3)]
    sup.start(list(sup.gateways))
    # 12 connections need 2 gateways: one goes, the emptiest, gw3 (not registered yet)
    registry = FakeRegistry({"gw1": (8, False), "gw2": (4, False)})
    sup._autoscaler = AutoscaleLoop(policy, registry, Keys())  # type: ignore[arg-type]
    try:
        decision = sup.autoscale(100.0)
        assert decision is not None and decision.drain == ("gw3",)
        assert [g.ident for g in sup.gateways] == ["gw1", "gw2"]
        (retired,) = sup.retiring
        assert retired.proc is not None and retired.proc.wait(timeout=10) == -signal.SIGTERM
        assert sup.autoscale(101.0) is None  # not due yet: one look per interval
        registry.rows = {"gw1": (1, False), "gw2": (1, False)}
        decision = sup.autoscale(102.0)
        assert decision is not None and decision.drain == ("gw2",)  # tie: the newer
        assert [g.ident for g in sup.gateways] == ["gw1"]
    finally:
        sup.shutdown()
