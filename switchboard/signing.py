"""Request signatures shared by the proxy and webhooks: ``X-Switchboard-Signature:
t=TIMESTAMP,v1=HEX`` (HMAC-SHA256 of ``b"TIMESTAMP." + body``), several ``v1`` while
secrets rotate."""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNATURE_HEADER = "X-Switchboard-Signature"
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts a timestamp away from its clock
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``t=TIMESTAMP,v1=HEX``: HMAC-SHA256 of ``b"TIMESTAMP." + body`` under ``secret``."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float,
           tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """What a backend checks: a ``v1`` signature of ``body`` at a timestamp within
    ``tolerance`` seconds of ``now``. Anything else in the header (non-ASCII text included)
    is a False, never an exception: ``hmac.compare_digest`` raises TypeError on a non-ASCII
    str, so only 64 lower-case hex digits are compared."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamp = fields.get("t", [""])[0]
    if not (stamp.isascii() and stamp.isdigit()):
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(_HEX_MAC.fullmatch(v) is not None and hmac.compare_digest(expected, v)
               for v in fields.get("v1", []))


def sign_all(secrets: tuple[bytes, ...], timestamp: int, body: bytes) -> str:
    """The header for several secrets: ``t=...,v1=...,v1=...`` (a receiver checks any)."""
    macs = (sign(secret, timestamp, body).rpartition("v1=")[2] for secret in secrets)
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])
