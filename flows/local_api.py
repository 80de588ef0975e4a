"""Boot Prefect's local API in parallel with clipvec's own start-up.

With no API configured, Prefect starts a temporary server (a uvicorn subprocess
on SQLite) on first use and waits for it: several seconds during which
nothing else happens. The command line instead launches that same server as
its very first step, before importing torch, Prefect or the model, so both
start-ups share the machine's cores; :func:`wait` checks its health before the
flow runs. Nothing changes when an API is configured (``PREFECT_API_URL`` in
the environment or the active profile) or ephemeral mode is turned off.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from clipvec_tasks.errors import ClipvecError  # no heavy imports: a package of plain modules
from flows import prefect_sqlite

_proc: subprocess.Popen[bytes] | None = None
_url: str | None = None
_new_database: Path | None = None  # the database the early server creates on first start
_from_template = False  # ... made from a prefect_sqlite template (few or no migrations left)
_log: tuple[Path, int] | None = None  # the server's log file, and where this start began


def _home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def _api_configured() -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return True
    if os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "").lower() in ("0", "false"):
        return True
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", _home() / "profiles.toml")).expanduser()
    if not path.is_file():
        return False
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return True  # unreadable: leave everything to Prefect
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def start_early() -> None:
    """Launch the temporary API server now and point this process's Prefect at it."""
    global _proc, _url, _new_database, _from_template, _log
    if _api_configured():
        return
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
    database = _home() / "prefect.db"  # Prefect's default, unless another one is set
    _new_database = None
    _from_template = False
    if not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") and not database.exists():
        _new_database = database
        _from_template = prefect_sqlite.create_database(database)
    env = server_env(os.environ)
    # its output goes to a log file, not the user's terminal: a server stopped while it
    # records the run's last events logs the cancelled write as a traceback (Prefect's
    # own temporary server does the same); a server that fails to start is reported
    # with the end of that log
    log_path = _home() / "clipvec-local-api.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} port {port}\n"
                  .encode())
        log.flush()
        _log = (log_path, log.tell())
        _proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
             str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    _url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = _url
    atexit.register(stop)


def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The temporary server's environment. It lives for one command: its usage telemetry,
    on by default, would only race the first command's database creation ("database is
    locked" tracebacks on a fresh PREFECT_HOME) and call out from offline machines, so it
    is off unless the environment says otherwise."""
    return {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **environ, "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def starting_note() -> str | None:
    """What the early server is doing, for the user waiting on it; None when there is none."""
    if _proc is None:
        return None
    if _new_database is not None and _from_template:
        return f"Prefect's local API is starting, on a new database ({_new_database})"
    if _new_database is not None:
        return (f"Prefect's local API is starting; its first start migrates a new database "
                f"({_new_database}): about 10 s, once")
    return "Prefect's local API is starting"


def wait(timeout: float | None = None) -> None:
    """Block until the early server answers its health check."""
    if _proc is None or _url is None:
        return
    timeout = timeout or float(os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc.poll() is not None:
            raise ClipvecError(f"Prefect's local API server exited with code "
                               f"{_proc.returncode}{_log_tail()}\n{_INSTEAD}")
        try:
            with urllib.request.urlopen(f"{_url}/health", timeout=1) as r:
                if r.status == 200:
                    _first_request()
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise ClipvecError(f"Prefect's local API server did not start within {timeout:.0f} s "
                       f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS sets how long to "
                       f"wait){_log_tail()}\n{_INSTEAD}")


def _first_request() -> None:
    """Make the server's first API request now. Prefect's server answers its first request
    after its health check slowly (0.57 s on 2 cores, then 3 ms: it sets itself up on
    first use); made here, that happens while this process is still loading the model,
    not when the flow run asks for the API version. Its answer does not matter."""
    try:
        with urllib.request.urlopen(f"{_url}/admin/version", timeout=30) as r:
            r.read()
    except OSError:
        pass


_INSTEAD = ("To use a Prefect server of your own instead, start one (prefect server start) "
            "and set PREFECT_API_URL=http://127.0.0.1:4200/api.")


def _log_tail(lines: int = 20) -> str:
    """The end of what the server logged since this start, for an error message."""
    if _log is None:
        return ""
    path, start = _log
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"; its log ({path}) ends:\n{tail}" if tail else f"; its log: {path}"


def stop() -> None:
    global _proc
    if _proc is not None and _proc.poll() is None:
        _proc.terminate()
        try:
            _proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _proc.kill()
            _proc.wait()
    _proc = None
