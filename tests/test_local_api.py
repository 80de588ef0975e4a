"""The early Prefect API server: when it starts, and what the user is told while it does."""

from __future__ import annotations

import os

import pytest

from flows import local_api


class _FakeServer:
    """Stands in for the uvicorn process (these tests check the decisions, not Prefect)."""

    says = b""  # what it writes to its output, then
    exits_with: int | None = None

    def __init__(self, *args, stdout=None, **kwargs) -> None:
        if stdout is not None and self.says:
            stdout.write(self.says)
            stdout.flush()
        self.returncode = self.exits_with

    def poll(self):
        return self.returncode

    def terminate(self) -> None:
        self.returncode = 0

    def wait(self, timeout=None) -> int:
        return 0


@pytest.fixture
def early(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API_", "PREFECT_PROFILE", "PREFECT_SERVER_ALLOW"))}
    env["PREFECT_HOME"] = str(tmp_path)
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(local_api.subprocess, "Popen", _FakeServer)
    monkeypatch.setattr(_FakeServer, "says", b"")
    monkeypatch.setattr(_FakeServer, "exits_with", None)
    monkeypatch.setattr(local_api.atexit, "register", lambda fn: None)
    for name in ("_proc", "_url", "_new_database"):
        monkeypatch.setattr(local_api, name, None)
    return tmp_path


def test_first_start_says_it_creates_the_database(early):
    local_api.start_early()
    note = local_api.starting_note()
    assert note and "creates its database" in note and str(early / "prefect.db") in note
    assert os.environ["PREFECT_API_URL"].startswith("http://127.0.0.1:")


def test_later_starts_only_say_the_api_is_starting(early):
    (early / "prefect.db").write_bytes(b"")
    local_api.start_early()
    assert local_api.starting_note() == "Prefect's local API is starting"


def test_no_early_server_and_no_note_when_an_api_is_configured(early):
    os.environ["PREFECT_API_URL"] = "http://prefect.example:4200/api"
    local_api.start_early()
    assert local_api.starting_note() is None


def test_server_output_goes_to_its_log_and_a_failed_start_says_why(early):
    """The server's own output never reaches the terminal (a server stopped while it
    records the last events logs a traceback); a server that dies is reported, as a
    paragraph, with the end of what it logged this time."""
    from clipvec_tasks.errors import ClipvecError

    _FakeServer.says = b"old run's noise\n"
    local_api.start_early()
    del os.environ["PREFECT_API_URL"]  # the next command
    _FakeServer.says = b"ERROR: [Errno 98] address already in use\n"
    _FakeServer.exits_with = 1
    local_api.start_early()
    with pytest.raises(ClipvecError) as e:
        local_api.wait(timeout=5)
    msg = str(e.value)
    assert "exited with code 1" in msg and "address already in use" in msg
    assert "old run's noise" not in msg and "PREFECT_API_URL" in msg
    assert "old run's noise" in (early / "clipvec-local-api.log").read_text()
