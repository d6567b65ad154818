"""The router's metrics as Prometheus scrapes them."""

from __future__ import annotations

from typing import get_args

from router.metrics import Operation, RouterMetrics


def test_every_redis_error_series_exists_from_zero_before_the_first_error() -> None:
    # rate() needs two samples: a series born at 1 on the first error would hide a short
    # burst from SwitchboardRouterRedisErrors
    text = RouterMetrics().render()[0].decode()
    for operation in get_args(Operation):
        assert f'switchboard_router_redis_errors_total{{operation="{operation}"}} 0.0' in text
