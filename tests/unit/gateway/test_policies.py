from __future__ import annotations

from gateway.http import OriginPolicy, split_target
from gateway.ratelimit import TokenBucket


def test_origin_policy() -> None:
    same_host = OriginPolicy(())
    assert same_host.allows(None, "a:1")  # non-browser clients send no Origin
    assert same_host.allows("http://a:1", "a:1")
    assert not same_host.allows("http://evil:1", "a:1")
    listed = OriginPolicy(("https://*.example.com", "http://localhost:3000"))
    assert listed.allows("https://app.example.com", "gw:8080")
    assert listed.allows("http://localhost:3000", "gw:8080")
    assert not listed.allows("https://example.com.evil.io", "gw:8080")
    assert OriginPolicy(("*",)).allows("http://anything", None)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token refilled after half a second at 2/s
    assert not bucket.take(0.5)


def test_query_parsing() -> None:
    assert split_target("/ws?token=a.b.c&channels=x,y") == ("/ws", {"token": "a.b.c",
                                                                   "channels": "x,y"})
