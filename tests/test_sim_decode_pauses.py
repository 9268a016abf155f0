"""The simulator's decode pauses: a long prefill of another request holding every running
stream for a while, so that false stall alarms are measured rather than assumed away.

The schedule is an I/O-free core (:class:`~spotrelay.sim.engine.DecodePauses`) tested
with explicit times; one real process shows the client-side gap and the exact text.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from spotrelay.sim import textgen
from spotrelay.sim.engine import DecodePauses
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup, spotrelay_argv
from tests.support import start_sim_vllm

MODEL = "sim-model"


def test_pause_windows_and_what_they_do_to_a_token() -> None:
    pauses = DecodePauses(pause_s=0.5, every_s=3.0, origin=1.0)
    assert pauses.hold_until(1.0) == 1.5  # a window opens at origin + k * every_s
    assert pauses.hold_until(1.49) == 1.5
    assert pauses.hold_until(1.5) is None  # the end is open: decode runs again
    assert pauses.hold_until(3.9) is None
    assert pauses.hold_until(4.2) == 4.5
    assert pauses.hold_until(0.1) is None  # before the origin: the window of k = -1 ended
    assert pauses.hold_until(-1.8) == -1.5
    assert pauses.due(2.0) == 2.0 and pauses.due(7.3) == 7.5
    assert not DecodePauses(0.5, 0.0).on and DecodePauses(0.5, 0.0).hold_until(1.0) is None


def test_a_pause_shifts_every_later_token_by_the_time_held() -> None:
    pauses = DecodePauses(pause_s=0.5, every_s=3.0, origin=0.0)
    # Tokens every 0.1 s from 2.75: 2.75, 2.85, 2.95, then 3.05 falls in [3.0, 3.5).
    assert pauses.finish_time(2.75, 3, 0.1) == pytest.approx(2.95)
    assert pauses.finish_time(2.75, 4, 0.1) == pytest.approx(3.5)
    assert pauses.finish_time(2.75, 6, 0.1) == pytest.approx(3.7)
    assert DecodePauses().finish_time(2.75, 6, 0.1) == pytest.approx(3.25)
    assert pauses.finish_time(3.2, 1, 0.1) == 3.5  # the first token waits as well


def test_tokens_counted_by_a_time_respect_the_pauses() -> None:
    pauses = DecodePauses(pause_s=0.5, every_s=3.0, origin=0.0)
    # Tokens due 2.75, 2.85, 2.95, 3.5 (held), 3.6, 3.7.
    assert [pauses.tokens_by(2.75, 6, 0.1, t) for t in (2.7, 2.75, 3.0, 3.49, 3.5, 9.0)] == [
        0, 1, 3, 3, 4, 6,
    ]  # fmt: skip


def test_a_long_non_streaming_answer_moves_the_token_counter(
    procs: ProcessGroup, logdir: Path
) -> None:
    """vLLM counts every decode step; the node agent's stall check relies on it."""
    sim = start_sim_vllm(procs, logdir, "--ttft-ms", "5", "--itl-ms", "20")
    body = {"model": MODEL, "prompt": "long", "max_tokens": 100}  # 2 s
    t = threading.Thread(target=requests.post, args=(sim.url + "/v1/completions",),
                         kwargs={"json": body, "timeout": 10})  # fmt: skip
    t.start()

    def counter() -> float:
        text = requests.get(sim.url + "/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("vllm:generation_tokens_total"))
        return float(line.rsplit(" ", 1)[1])

    wait_until(lambda: 10 <= counter() < 100, timeout=5, what="the counter to move mid-answer")
    t.join(10)
    assert counter() == 100


def test_streams_pause_with_exact_text(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(
        procs, logdir, "--ttft-ms", "5", "--itl-ms", "10",
        "--decode-pause-ms", "300", "--decode-pause-every-s", "1",
    )  # fmt: skip
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=10)
    arrivals: list[float] = []
    text: list[str] = []
    for chunk in client.completions.create(
        model=MODEL, prompt="pause", max_tokens=150, stream=True
    ):
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic())
            text.append(chunk.choices[0].text)
    assert text == textgen.generate("pause", 150)
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    # 150 tokens at 10 ms span at least one 1 s period: at least one ~300 ms hold,
    # while most gaps stay at the inter-token latency.
    assert gaps[-1] >= 0.2, gaps[-5:]
    assert gaps[len(gaps) // 2] < 0.1


def test_pause_flags_are_checked() -> None:
    for args, message in [
        (("--decode-pause-ms", "500"), "set together with sim.decode_pause_every_s"),
        (
            ("--decode-pause-ms", "2000", "--decode-pause-every-s", "1"),
            "must be shorter than decode_pause_every_s",
        ),
    ]:
        proc = subprocess.run(
            spotrelay_argv("sim", "vllm", "--port", "1", *args),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
