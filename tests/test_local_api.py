"""The early Prefect API server: when it starts, and what the user is told while it does."""

from __future__ import annotations

import os

import pytest

from flows import local_api


class _FakeServer:
    """Stands in for the uvicorn process (these tests check the decisions, not Prefect)."""

    def __init__(self, *args, **kwargs) -> None:
        self.returncode = None

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
