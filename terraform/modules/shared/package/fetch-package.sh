#!/bin/bash
# spotrelay-fetch-package PYTHON SOURCE SHA256 REGION: print the fetched file only if its sha256 matches
set -euo pipefail
py=$1 src=$2 want=$3 region=$4
dir=$(mktemp -d)
case "$src" in
  s3://*)
    "$py" - "$src" "$dir" "$region" >&2 <<'PY'
import os, sys, botocore.session
bucket, _, key = sys.argv[1][5:].partition("/")
s3 = botocore.session.get_session().create_client("s3", region_name=sys.argv[3])
with open(os.path.join(sys.argv[2], os.path.basename(key)), "wb") as f:
    f.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
PY
    ;;
  *)
    printf '%s --hash=sha256:%s\n' "$src" "$want" > "$dir.txt"
    "$py" -m pip download -q --no-deps --require-hashes -r "$dir.txt" -d "$dir" >&2 ;;
esac
file=$(find "$dir" -maxdepth 1 -type f | head -n 1)
got=$(sha256sum "$file" | cut -d ' ' -f 1)
if [ "$got" != "$want" ]; then
  echo "spotrelay-fetch-package: $src has sha256 $got, not $want: refusing to install it" >&2
  exit 1
fi
echo "$file"
