"""Copy a model from S3 to local disk (instance-store NVMe when present), in parallel.

Usage: fetch-model S3_URI DEST REGION
Every object under the prefix is downloaded with many concurrent ranged GETs
(boto3's transfer manager per object, several objects at once); files already
present with the right size are skipped, so a rerun after a reboot is cheap.
Runs under the spotrelay virtualenv's Python, which has boto3.
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

FILES_AT_ONCE = 8


def main() -> int:
    uri, dest, region = sys.argv[1:4]
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = boto3.client("s3", region_name=region, config=Config(max_pool_connections=64))
    transfer = TransferConfig(max_concurrency=16, multipart_chunksize=64 * 1024 * 1024)
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    if not objects:
        print(f"fetch-model: nothing under {uri}", file=sys.stderr)
        return 1

    def fetch(obj: dict) -> int:
        path = os.path.join(dest, obj["Key"][len(prefix) :])
        if os.path.exists(path) and os.path.getsize(path) == obj["Size"]:
            return 0
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, obj["Key"], path + ".part", Config=transfer)
        os.replace(path + ".part", path)
        return obj["Size"]

    started = time.monotonic()
    with ThreadPoolExecutor(FILES_AT_ONCE) as pool:
        copied = sum(pool.map(fetch, objects))
    took = time.monotonic() - started
    print(f"fetch-model: {len(objects)} files, {copied / 2**30:.1f} GiB in {took:.0f}s from {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
