"""Buckets through the standard AWS_* variables alone, against a local S3 server (moto)."""

from __future__ import annotations

import io
import os

import lance
import pytest

from flows.vectorize import run
from tests.conftest import job_config, make_image

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback; only AWS_* variables point clipvec at it."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testkey",
           "AWS_SECRET_ACCESS_KEY": "testsecret", "AWS_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket="photos")
    yield client
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _upload(client, key: str, seed: int) -> None:
    tmp = io.BytesIO()
    path = make_image(__import__("pathlib").Path(f"/tmp/clipvec-s3-{os.getpid()}-{seed}.png"),
                      seed=seed)
    tmp.write(path.read_bytes())
    client.put_object(Bucket="photos", Key=key, Body=tmp.getvalue())
    path.unlink()


def test_bucket_to_bucket_then_incremental(s3, tmp_path):
    for i in range(5):
        _upload(s3, f"set/{'deep/' if i % 2 else ''}img{i}.png", seed=i)
    sink = "s3://photos/out.lance"
    first = run(job_config("s3://photos/set", sink, shard_size=2))
    assert first["ok"] == 5 and first["version"] == 1
    ds = lance.dataset(sink)
    ids = ds.to_table(columns=["id"]).column("id").to_pylist()
    assert all(i.startswith("s3://photos/set/") for i in ids)
    etags = ds.to_table(columns=["etag"]).column("etag").to_pylist()
    assert all(etags)

    for i in range(5, 13):
        _upload(s3, f"set/new/img{i}.png", seed=i)
    second = run(job_config("s3://photos/set", sink, shard_size=2))
    ds = lance.dataset(sink)
    assert second["embedded"] == 8 and ds.version == 2 and ds.count_rows() == 13
    assert set(ds.to_table(columns=["status"]).column("status").to_pylist()) == {"ok"}

    third = run(job_config("s3://photos/set", sink, shard_size=2))
    assert third["embedded"] == 0 and lance.dataset(sink).version == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="photos", Prefix="out.lance/")
            .get("Contents", [])]
    assert not any("_clipvec_staging" in k for k in keys)


def test_credentials_never_reach_the_dataset(s3):
    sink = "s3://photos/secret-check.lance"
    _upload(s3, "one/x.png", seed=1)
    run(job_config("s3://photos/one", sink))
    ds = lance.dataset(sink)
    blob = str(ds.schema.metadata) + ds.to_table().to_pandas().to_string()
    assert "testsecret" not in blob and "testkey" not in blob


def test_listing_a_bucket_leaves_no_listings_cached(s3):
    """s3fs caches every listing for the life of the process (an info dict per object):
    the walk drops each folder's once taken, or a big bucket's listing would stay in
    memory through the whole run, several times over what the plan keeps."""
    from clipvec_tasks.sources import list_images, resolve

    for d in range(3):
        for i in range(4):
            s3.put_object(Bucket="photos", Key=f"cache/{d}/{i}.jpg", Body=b"x")
    assert len(list(list_images("s3://photos/cache"))) == 12
    fs, _ = resolve("s3://photos/cache")
    assert sum(len(v) for v in fs.dircache.values()) == 0
