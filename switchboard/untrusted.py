"""Rules for what callers send, shared by the router and the gateway.

JSON text may spell a lone surrogate (``"\\ud800"``): Python decodes it into a ``str`` that
UTF-8, and so our JSON answers and msgpack's str type, cannot carry. An error that repeats a
caller's value must still encode whatever the caller sent, so every error path quotes such
values through :func:`quotable`. And JSON has no NaN or Infinity (RFC 8259 6): data holding
them is refused (:func:`finite`), since JSON clients could not read it back.
"""

from __future__ import annotations

import math
from typing import Any


def quotable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates) as backslash escapes."""
    if text.isascii():  # the usual case, and nothing to replace
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def finite(data: Any) -> bool:
    """False if a NaN or an infinity is anywhere in ``data`` (dict values, list items)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True
