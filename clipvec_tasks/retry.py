"""Which storage errors are worth retrying, and a small backoff loop for them."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
                     errno.EPIPE, errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH}
_TRANSIENT_WORDS = ("slowdown", "slow down", "throttl", "too many requests", "503", "429",
                    "500 internal", "service unavailable", "connection reset", "timed out",
                    "temporarily", "try again")


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may cure (throttling, 5xx, resets, timeouts).

    Not found, permission denied and bad requests are permanent.
    """
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | ValueError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
    if isinstance(status, int):
        return status == 429 or 500 <= status < 600
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = str(exc).lower()
    return any(w in text for w in _TRANSIENT_WORDS)


def with_retries(fn: Callable[[], T], attempts: int = 4, base_delay: float = 0.5,
                 max_delay: float = 10.0) -> T:
    """Call ``fn``; retry transient errors with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts - 1 or not is_transient(e):
                raise
            delay = min(max_delay, base_delay * 2**attempt)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")
