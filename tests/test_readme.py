"""README's promises: its recipes run as written; CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.vectorize import run
from tests.conftest import job_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _recipe(name: str) -> str:
    m = re.search(rf"<!-- readme-recipe: {name} -->\s*```python\n(.*?)```", README, re.S)
    assert m, f"README lost its '{name}' recipe"
    return m.group(1)


def test_ci_runs_the_readme_test_command():
    assert "python -m pytest" in README
    assert "pytest" in (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in README


def test_reading_recipe_runs_as_written(image_dir, tmp_path, monkeypatch, prefect_api):
    pytest.importorskip("polars")
    monkeypatch.chdir(tmp_path)
    run(job_config(image_dir, tmp_path / "clipvec-demo.lance"))
    scope: dict = {}
    exec(compile(_recipe("reading"), "README.md", "exec"), scope)
    assert len(scope["df"]) == 7 and scope["frame"].height == 7
    assert scope["old"].version == 1
