"""The early Prefect API server: when it starts, and what the user is told while it does."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows import local_api, prefect_sqlite

ROOT = Path(__file__).resolve().parents[1]


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
    monkeypatch.setattr(local_api, "_from_template", False)
    return tmp_path


HEAD = prefect_sqlite.installed_head()
TEMPLATE = prefect_sqlite.template_for(prefect_sqlite.installed_history())
needs_template = pytest.mark.skipif(
    TEMPLATE is None,
    reason=f"no schema template on the installed Prefect's migrations (head {HEAD}): "
           "python -m flows.prefect_sqlite writes it")


@needs_template
def test_first_start_creates_the_database_from_the_template(early):
    local_api.start_early()
    db = early / "prefect.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            (TEMPLATE.stem,)]
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"flow", "flow_run", "task_run", "block_document"} <= tables
    note = local_api.starting_note()
    assert note and "new database" in note and str(db) in note and "10 s" not in note
    assert os.environ["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    assert [p.name for p in early.iterdir() if p.name.startswith(".prefect-")] == []


def test_first_start_without_a_template_leaves_the_migrations_to_prefect(early, monkeypatch):
    monkeypatch.setattr(prefect_sqlite, "TEMPLATES", early / "none")
    local_api.start_early()
    assert not (early / "prefect.db").exists()
    note = local_api.starting_note()
    assert note and "migrates a new database" in note and str(early / "prefect.db") in note


@needs_template
def test_the_template_never_replaces_a_database(tmp_path, monkeypatch):
    db = tmp_path / "prefect.db"
    db.write_bytes(b"another command's database")
    assert not prefect_sqlite.create_database(db)
    # ... nor one that appears while the template is being written (two first commands)
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_bytes(b"the other command won")
        return real_link(src, dst)

    other = tmp_path / "other" / "prefect.db"
    monkeypatch.setattr(prefect_sqlite.os, "link", racing_link)
    assert not prefect_sqlite.create_database(other)
    assert db.read_bytes() == b"another command's database"
    assert other.read_bytes() == b"the other command won"
    assert sorted(p.name for p in other.parent.iterdir()) == ["prefect.db"]


def test_a_database_url_of_the_users_own_is_left_alone(early):
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{early / 'mine.db'}"
    local_api.start_early()
    assert not (early / "prefect.db").exists() and not (early / "mine.db").exists()
    assert local_api.starting_note() == "Prefect's local API is starting"


def test_head_is_read_from_the_migration_files(tmp_path, monkeypatch):
    for name, rev, down in [("a", "aaa1", None), ("b", "bbb2", "aaa1"), ("c", "ccc3", "bbb2")]:
        down_text = "None" if down is None else f'"{down}"'
        (tmp_path / f"2026_{name}.py").write_text(
            f'"""m"""\nrevision = "{rev}"\ndown_revision = {down_text}\n')
    monkeypatch.setattr(prefect_sqlite, "_migrations_dir", lambda: tmp_path)
    assert prefect_sqlite.installed_history() == ["ccc3", "bbb2", "aaa1"]
    assert prefect_sqlite.installed_head() == "ccc3"
    (tmp_path / "2026_d.py").write_text('revision = "ddd4"\ndown_revision = "bbb2"\n')
    assert prefect_sqlite.installed_head() is None  # two heads: not one linear history


def test_a_newer_prefect_starts_from_the_newest_template_on_its_history(tmp_path, monkeypatch):
    """Prefect releases add migrations; a template of an earlier revision on the installed
    history still spares all the migrations up to it (Prefect runs the rest)."""
    migrations, templates = tmp_path / "versions", tmp_path / "templates"
    migrations.mkdir()
    templates.mkdir()
    for rev, down in [("aaa1", None), ("bbb2", "aaa1"), ("ccc3", "bbb2")]:
        down_text = "None" if down is None else f'"{down}"'
        (migrations / f"m_{rev}.py").write_text(
            f'revision = "{rev}"\ndown_revision = {down_text}\n')
    for rev in ("aaa1", "bbb2", "zzz9"):  # zzz9: another Prefect line's, never used here
        (templates / f"{rev}.sql").write_text(
            "BEGIN TRANSACTION;\nCREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);\n"
            f"INSERT INTO \"alembic_version\" VALUES('{rev}');\nCOMMIT;\n")
    monkeypatch.setattr(prefect_sqlite, "_migrations_dir", lambda: migrations)
    monkeypatch.setattr(prefect_sqlite, "TEMPLATES", templates)
    db = tmp_path / "home" / "prefect.db"
    assert prefect_sqlite.create_database(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [("bbb2",)]
    (templates / "aaa1.sql").unlink()
    (templates / "bbb2.sql").unlink()
    assert not prefect_sqlite.create_database(tmp_path / "other" / "prefect.db")


@pytest.mark.skipif(not (prefect_sqlite.TEMPLATES / f"{HEAD}.sql").is_file(),
                    reason=f"no schema template for the installed Prefect's head ({HEAD})")
def test_the_template_is_what_prefects_own_migrations_make():
    """Runs the installed Prefect's migrations (seconds) and compares their schema."""
    p = subprocess.run([sys.executable, "-m", "flows.prefect_sqlite", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


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


@needs_template
def test_a_home_that_refuses_files_leaves_the_database_to_prefect(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prefect_sqlite.tempfile, "mkstemp", refuse)
    assert not prefect_sqlite.create_database(tmp_path / "home" / "prefect.db")
    assert not (tmp_path / "home" / "prefect.db").exists()


def test_starting_the_server_early_imports_nothing_heavy(tmp_path):
    """The early server is launched before Prefect, torch or the model are imported (that
    is what lets their start-ups overlap); the template code must not import them either."""
    code = ("import sys; from flows import local_api, prefect_sqlite; "
            "prefect_sqlite.installed_history(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'prefect', 'torch', 'lance', 'pyarrow', 'open_clip', 'sqlalchemy', 'numpy'}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PREFECT_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_wait_makes_the_servers_first_api_request_once_healthy(monkeypatch):
    """Prefect's server is slow on its first request after the health check; wait() makes
    that request itself (while the model is still loading), after the server is healthy."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'"3.9.1"')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(local_api, "_proc", _FakeServer())
        monkeypatch.setattr(local_api, "_url", f"http://127.0.0.1:{server.server_port}/api")
        local_api.wait(timeout=10)
    finally:
        server.shutdown()
    assert seen == ["/api/health", "/api/admin/version"]
