"""Only transient storage errors are retried."""

from __future__ import annotations

import errno

import pytest

from clipvec_tasks.retry import is_transient, with_retries


class _ClientError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": code}}


@pytest.mark.parametrize("exc", [
    ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("timed out"),
    _ClientError(503), _ClientError(429), _ClientError(500), OSError("SlowDown: reduce rate"),
])
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError("x"), PermissionError("denied"), _ClientError(403), _ClientError(404),
    ValueError("bad"), OSError(errno.EISDIR, "is a directory"),
])
def test_permanent(exc):
    assert not is_transient(exc)


def test_with_retries_retries_transient_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return "ok"

    assert with_retries(flaky, base_delay=0.001) == "ok" and len(calls) == 3


def test_with_retries_raises_permanent_at_once():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, base_delay=0.001)
    assert len(calls) == 1
