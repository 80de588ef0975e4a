"""How long listing a bucket takes: folders one after another, or listed ahead in threads.

    python bench/list_bucket.py [--folders 200] [--per-folder 50] [--latency-ms 0,30]

Starts a local S3 server (moto, in its own process), fills a bucket with
``folders`` x ``per-folder`` empty ``.jpg`` objects, and times ``sources.list_images``
over it through s3fs, both ways in the same run: ``ahead=0`` (one folder listing after
another, as s3fs's own walk does) and the default ``sources.LIST_AHEAD``. A local
server answers in about a millisecond; a cloud bucket's LIST takes tens, so each
``--latency-ms`` value is added to every listing request (an asyncio sleep in s3fs's
``_lsdir``) to show what the threads buy where requests wait on the network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folders", type=int, default=200)
    p.add_argument("--per-folder", type=int, default=50)
    p.add_argument("--latency-ms", default="0,30")
    p.add_argument("--out")
    args = p.parse_args()
    import boto3
    import s3fs

    from clipvec_tasks import sources

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_REGION": "us-east-1"})
        client = boto3.client("s3")
        for _ in range(100):
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        keys = [f"photos/{f:05d}/{i:06d}.jpg" for f in range(args.folders)
                for i in range(args.per_folder)]
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: client.put_object(Bucket="bench", Key=k, Body=b""), keys))
        plain = s3fs.S3FileSystem._lsdir
        results = {"objects": len(keys), "folders": args.folders, "runs": {}}
        for latency in (float(x) for x in args.latency_ms.split(",")):

            async def slow(self, *a, _latency=latency, **kw):
                await asyncio.sleep(_latency / 1000)
                return await plain(self, *a, **kw)

            s3fs.S3FileSystem._lsdir = slow
            row = {}
            for ahead in (0, sources.LIST_AHEAD):
                fs, root = sources.resolve("s3://bench/photos")
                t0 = time.perf_counter()
                n = sum(1 for _ in sources._walk(fs, root, ahead=ahead))
                row[f"ahead={ahead}"] = {"items": n, "seconds": round(time.perf_counter() - t0, 2)}
            row["speedup"] = round(row["ahead=0"]["seconds"]
                                   / row[f"ahead={sources.LIST_AHEAD}"]["seconds"], 1)
            results["runs"][f"latency_ms={latency:g}"] = row
            print(f"latency {latency:g} ms:", json.dumps(row), flush=True)
        s3fs.S3FileSystem._lsdir = plain
    finally:
        server.terminate()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
