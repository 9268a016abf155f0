"""SSE framer benchmark: CPU per event on normal streams, and on a hostile newline-free stream.

Runs :class:`spotrelay.router.stream.sse.SSEFramer` as it is in the work tree and as
it is at ``--baseline`` (a git ref, default ``main``), side by side in this
process, on the same inputs:

- ``one-per-read``: a chat-completion chunk (~230 bytes) per upstream read,
  the relay's common case;
- ``batched``: 8 events per read (a fast engine, or a read that fell behind);
- ``split``: every event cut in two reads (a TCP segment boundary mid-event);
- ``newline-free``: one event, then ``--hostile-mb`` MiB without a newline in
  64 KiB reads (what a broken or hostile engine can send). The work-tree
  framer runs it with its default cap off, to show the framing itself is
  linear; the baseline has no cap.

Prints CPU ns per event (per 64 KiB read for the hostile case; the fastest
of ``--repeats`` interleaved runs) and the ratio work tree / baseline;
nothing is asserted. Run from the repository root:
``.venv/bin/python bench/sse_bench.py [--baseline REF]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVENT = (
    b'data: {"id":"chatcmpl-8f1c2d","object":"chat.completion.chunk","created":1733450000,'
    b'"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":'
    b'{"content":" token"},"logprobs":null,"finish_reason":null}]}\n\n'
)
READ = 65536


def load_framer(ref: str | None) -> type:
    """SSEFramer from the work tree (``ref`` None) or from ``git show ref:router/stream/sse.py``."""
    if ref is None:
        from spotrelay.router.stream.sse import SSEFramer

        return SSEFramer
    source = subprocess.run(
        ["git", "show", f"{ref}:router/stream/sse.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "sse_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("sse_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.SSEFramer


def normal_reads(kind: str, events: int) -> list[bytes]:
    if kind == "one-per-read":
        return [EVENT] * events
    if kind == "batched":
        return [EVENT * 8] * (events // 8)
    half = len(EVENT) // 2
    return [EVENT[:half], EVENT[half:]] * events


def best_of(repeats: int, runs: list[Callable[[], Any]]) -> list[float]:
    """The fastest of ``repeats`` timings of each run, interleaved so load hits all alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.process_time()  # CPU time: other processes' load does not count
            run()
            best[i] = min(best[i], time.process_time() - started)
    return best


def framing(framer_cls: type, reads: list[bytes], events: int) -> Callable[[], None]:
    def run() -> None:
        framer = framer_cls()
        feed = framer.feed
        got = 0
        for chunk in reads:
            got += len(feed(chunk))
        assert got == events, (got, events)

    return run


def hostile_reads(megabytes: int) -> list[bytes]:
    return [EVENT] + [b"x" * READ] * (megabytes * 1024 * 1024 // READ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git ref of the baseline framer")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--hostile-mb", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base, work = load_framer(args.baseline), load_framer(None)
    report: dict[str, Any] = {"baseline": args.baseline, "unit": "ns per event", "cases": {}}
    for kind in ("one-per-read", "batched", "split"):
        reads = normal_reads(kind, args.events)
        runs = [framing(cls, reads, args.events) for cls in (base, work)]
        b, w = (t / args.events * 1e9 for t in best_of(args.repeats, runs))
        report["cases"][kind] = {"baseline": round(b, 1), "work": round(w, 1), "ratio": w / b}
    reads = hostile_reads(args.hostile_mb)
    runs = [framing(cls, reads, 1) for cls in (base, work)]
    b, w = (t / len(reads) * 1e9 for t in best_of(1, runs))
    report["cases"][f"newline-free-{args.hostile_mb}MiB (ns per 64 KiB read)"] = {
        "baseline": round(b, 1),
        "work": round(w, 1),
        "ratio": w / b,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'case':48} {'baseline':>12} {'work tree':>12} {'ratio':>7}")
    for name, row in report["cases"].items():
        print(f"{name:48} {row['baseline']:12.1f} {row['work']:12.1f} {row['ratio']:7.3f}")


if __name__ == "__main__":
    main()
