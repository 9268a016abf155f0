"""Copy a model from S3 to local disk (instance-store NVMe when present), in parallel.

Usage: fetch-model S3_URI DEST REGION
Every object under the prefix is split into 64 MiB ranges and all ranges of
all files are fetched by 32 threads at once (ranged GETs: one large
safetensors shard does not serialise the copy); files already present with
the right size are skipped, so a rerun after a reboot is cheap. Runs under
the spotrelay virtualenv's Python with botocore only: nodes carry no boto3.
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.session
from botocore.config import Config

PART = int(os.environ.get("FETCH_MODEL_PART_BYTES", 64 * 1024 * 1024))  # smaller in tests
THREADS = 32


def main() -> int:
    uri, dest, region = sys.argv[1:4]
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = botocore.session.get_session().create_client(
        "s3",
        region_name=region,
        config=Config(max_pool_connections=THREADS, retries={"max_attempts": 8, "mode": "adaptive"}),
    )
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    if not objects:
        print(f"fetch-model: nothing under {uri}", file=sys.stderr)
        return 1

    todo = []  # (object, local path) still to fetch
    for obj in objects:
        path = os.path.join(dest, obj["Key"][len(prefix) :])
        if os.path.exists(path) and os.path.getsize(path) == obj["Size"]:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".part", "wb") as f:
            f.truncate(obj["Size"])
        todo.append((obj, path))

    def fetch_range(key: str, path: str, start: int, end: int) -> int:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
        with open(path + ".part", "r+b") as f:
            f.seek(start)
            for chunk in iter(lambda: body.read(1024 * 1024), b""):
                f.write(chunk)
        return end - start + 1

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(fetch_range, obj["Key"], path, start, min(start + PART, obj["Size"]) - 1)
            for obj, path in todo
            for start in range(0, obj["Size"], PART)
        ]
        copied = sum(f.result() for f in futures)  # the first failure stops the copy
    for _, path in todo:
        os.replace(path + ".part", path)
    took = time.monotonic() - started
    print(f"fetch-model: {len(objects)} files, {copied / 2**30:.1f} GiB in {took:.0f}s from {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
