"""`python flows/vectorize.py ...` exactly as users type it (CONTRACT.md's forms)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "CLIPVEC_CACHE_DIR": str(tmp / "c")}
    env.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)  # as a user's shell has it
    return subprocess.run([sys.executable, str(ROOT / "flows" / "vectorize.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_contract_command_on_nested_folder(image_dir, tmp_path):
    out = tmp_path / "out.lance"
    p = _run([f"source.uri={image_dir}", f"sink.uri={out}", "model=open_clip_vit_b32",
              "model.members.0.pretrained=random", "runtime.device=cpu"], tmp_path, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "7 embedded (7 ok" in p.stdout and "version 1, dim 512" in p.stdout
    t = lance.dataset(str(out)).to_table().to_pandas()
    assert len(t) == 7 and set(t.status) == {"ok"}
    np.testing.assert_allclose(np.linalg.norm(np.stack(t.embedding), axis=1), 1, atol=1e-5)
    assert not (tmp_path / "outputs").exists()  # Hydra leaves no output folders behind
    # a first run (fresh PREFECT_HOME) prints no server tracebacks ("database is locked")
    assert "Traceback" not in p.stderr and "locked" not in p.stderr, p.stderr[-3000:]


def test_temporary_server_keeps_telemetry_off_unless_asked():
    from flows.local_api import server_env

    assert server_env({})["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert server_env({"PREFECT_SERVER_ANALYTICS_ENABLED": "true"})[
        "PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["model=open_clip_vit_b23"], "Closest registered names: open_clip_vit_b32"),
        (["source.uri=/nonexistent/photos"], "does not exist"),
        (["model=[tiny_unknown,resnet152]"], "Unknown model 'tiny_unknown'"),
    ],
)
def test_user_errors_are_one_paragraph_without_traceback(args, expect, tmp_path):
    p = _run([*args, f"sink.uri={tmp_path / 'o.lance'}", "runtime.device=cpu"], tmp_path, tmp_path)
    assert p.returncode == 2
    assert expect in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert p.stderr.strip().startswith("clipvec: error:")


def test_summary_of_a_run_with_nothing_new_says_the_dataset_is_unchanged():
    from clipvec_tasks.job import format_summary, summarize

    text = format_summary(summarize(None, [], 6, 512, None, 0.06), "/d.lance")
    assert "dataset /d.lance unchanged" in text and "None" not in text
    assert "-> version 3, dim 512" in format_summary(summarize(None, [], 6, 512, 3, 1.0), "/d")
