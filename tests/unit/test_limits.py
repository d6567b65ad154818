"""Every process lifts its open-file limit, or a gateway tops out near a thousand clients."""

from __future__ import annotations

import resource

from switchboard.limits import UNLIMITED_TARGET, nofile_target, raise_nofile_limit


def test_target_is_the_hard_limit() -> None:
    assert nofile_target(1024, 20000) == 20000


def test_target_never_lowers_the_soft_limit() -> None:
    assert nofile_target(20000, 20000) == 20000


def test_unlimited_hard_limit_asks_for_what_the_kernel_allows() -> None:
    inf = resource.RLIM_INFINITY
    assert nofile_target(1024, inf) == UNLIMITED_TARGET
    assert nofile_target(inf, inf) == inf


def test_raise_lifts_soft_to_hard() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        new_soft, new_hard = raise_nofile_limit()
        assert new_hard == hard
        assert new_soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if hard != resource.RLIM_INFINITY:
            assert new_soft == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
