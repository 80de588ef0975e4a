"""Prefect's SQLite database, made in milliseconds instead of migrated for seconds.

A fresh PREFECT_HOME (a new machine, container, CI job or test) makes the
temporary Prefect server run all of its Alembic migrations (over a hundred,
most of which rebuild tables): about 5 s of a 2-core machine's first run,
longer than embedding a hundred images there. The schema those migrations
end at is fixed by their last revision, so clipvec carries it as SQL text
(``prefect_sqlite/<revision>.sql``, the ``sqlite3`` dump of a database Prefect
migrated itself) and, where that revision is on the installed Prefect's
migration history, creates the new database from it: Prefect then finds it up
to date, or runs only the migrations of its releases since. A Prefect whose
history holds no template (an older one) migrates as usual. ``python -m flows.prefect_sqlite``
writes the file for the installed Prefect; a test checks it equals what
Prefect's own migrations make.

Nothing here imports Prefect: the early server starts before Prefect is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

TEMPLATES = Path(__file__).parent / "prefect_sqlite"

_REVISION = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*['"]([0-9a-f]+)['"]""", re.M)
_DOWN = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*(None|['"]([0-9a-f]+)['"])""", re.M)


def _migrations_dir() -> Path | None:
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "server" / "database" / "_migrations" / "versions" / "sqlite"
    return path if path.is_dir() else None


def installed_history() -> list[str] | None:
    """The installed Prefect's SQLite migrations, newest first, read from its migration
    files; None when they cannot be read as one linear history."""
    folder = _migrations_dir()
    if folder is None:
        return None
    parent: dict[str, str | None] = {}
    for path in folder.glob("*.py"):
        if path.name.startswith("__"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        rev, down = _REVISION.search(text), _DOWN.search(text)
        if rev is None or down is None or rev.group(1) in parent:
            return None  # a layout this reader does not know (a merge, a tuple): migrate
        parent[rev.group(1)] = down.group(2)
    heads = set(parent) - {p for p in parent.values() if p}
    if len(heads) != 1:
        return None
    history = [heads.pop()]
    while (up := parent.get(history[-1])) is not None:
        if up not in parent:
            return None
        history.append(up)
    return history if len(history) == len(parent) else None


def installed_head() -> str | None:
    """The last SQLite migration of the installed Prefect."""
    history = installed_history()
    return history[0] if history else None


def template_for(history: list[str] | None) -> Path | None:
    """The newest template on the installed Prefect's migration history: its head's, or
    an earlier one's (Prefect then runs only the migrations after it, as it would have
    on its way from an empty database)."""
    for revision in history or ():
        path = TEMPLATES / f"{revision}.sql"
        if path.is_file():
            return path
    return None


def create_database(database: Path) -> bool:
    """Create Prefect's database at ``database`` from the newest template on the installed
    Prefect's migration history; False (and nothing written) when there is none, or
    when the file appeared meanwhile (another command is creating it)."""
    template = template_for(installed_history())
    if template is None or database.exists():
        return False
    tmp: str | None = None
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".prefect-", suffix=".db", dir=database.parent)
        os.close(fd)
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript(template.read_text(encoding="utf-8"))
        finally:
            conn.close()
        os.link(tmp, database)  # never replaces a database another command made
        return True
    except (OSError, sqlite3.Error):
        # it exists now, or this folder refuses files or hard links: Prefect creates it
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def dump(database: Path) -> str:
    conn = sqlite3.connect(database)
    try:
        return "\n".join(conn.iterdump()) + "\n"
    finally:
        conn.close()


def canonical(sql: str) -> list[str]:
    """A dump as the sorted list of its statements, each table's constraints sorted:
    Alembic's table rebuilds write constraints, and SQLite lists indexes, in an order
    that varies from run to run (set iteration); what they define does not."""
    statements: list[str] = []
    lines: list[str] = []
    constraints: list[str] = []
    for line in sql.splitlines():
        item = line.strip().rstrip(",").rstrip()
        if item.startswith("CONSTRAINT "):
            constraints.append(item)
            continue
        lines.extend(sorted(constraints))
        constraints = []
        lines.append(item)
        if sqlite3.complete_statement("\n".join(lines)):
            statements.append("\n".join(lines))
            lines = []
    lines.extend(sorted(constraints))
    if lines:
        statements.append("\n".join(lines))
    return sorted(statements)


def migrate(database: Path) -> None:
    """Run the installed Prefect's own migrations into a new SQLite file (imports Prefect)."""
    import asyncio

    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{database}"
    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())


def main(argv: list[str]) -> int:
    """Write (or with --check, compare) the template of the installed Prefect's schema."""
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python -m flows.prefect_sqlite [--check]", file=sys.stderr)
        return 2
    head = installed_head()
    if head is None:
        print("cannot read the installed Prefect's SQLite migrations", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "prefect.db"
        migrate(database)
        text = dump(database)
    if f"VALUES('{head}')" not in text:
        print(f"Prefect's migrations did not end at {head}", file=sys.stderr)
        return 1
    out = TEMPLATES / f"{head}.sql"
    if check:
        if not out.is_file():
            print(f"no template for Prefect's schema {head}: run python -m flows.prefect_sqlite",
                  file=sys.stderr)
            return 1
        if canonical(out.read_text(encoding="utf-8")) != canonical(text):
            print(f"{out} differs from what Prefect's migrations make", file=sys.stderr)
            return 1
        print(f"{out} equals what Prefect's migrations make")
        return 0
    TEMPLATES.mkdir(exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
