"""gs:// sources through gcsfs, against a local GCS emulator on loopback."""

from __future__ import annotations

import os
import socket

import lance
import pytest

from flows.vectorize import run
from tests.conftest import job_config, make_image

# read by gcsfs when it is imported: the emulator does not speak the HNS API
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
pytest.importorskip("gcsfs")
emulator = pytest.importorskip("gcp_storage_emulator.server")
pytestmark = pytest.mark.usefixtures("prefect_api")
OPTIONS = {"token": "anon", "project": "test"}


@pytest.fixture(scope="module")
def gcs():
    import fsspec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="photos")
    server.start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf.pop("gcs", None)
    yield fsspec.filesystem("gcs", skip_instance_cache=True, **OPTIONS)
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    server.stop()


def test_gs_source_then_incremental(gcs, tmp_path):
    for i in range(4):
        path = make_image(tmp_path / f"img{i}.png", seed=i)
        gcs.pipe(f"photos/set/{'sub/' if i % 2 else ''}img{i}.png", path.read_bytes())
    cfg = job_config("gs://photos/set", tmp_path / "g.lance")
    cfg["source"]["storage_options"] = dict(OPTIONS)
    first = run(cfg)
    ds = lance.dataset(str(tmp_path / "g.lance"))
    ids = ds.to_table(columns=["id"]).column("id").to_pylist()
    assert first["ok"] == 4 and all(i.startswith("gs://photos/set/") for i in ids)
    assert all(ds.to_table(columns=["etag"]).column("etag").to_pylist())
    gcs.pipe("photos/set/new.png", make_image(tmp_path / "n.png", seed=9).read_bytes())
    cfg["source"]["storage_options"] = dict(OPTIONS)
    second = run(cfg)
    assert second["embedded"] == 1 and lance.dataset(str(tmp_path / "g.lance")).count_rows() == 5
