"""Placement on real processes: a router under gunicorn (routing.policy cache_aware) and
simulator nodes. A conversation stays on one node; a broken stream resumes on the node
that already served its prefix, not the next one in line."""

from __future__ import annotations

from typing import Any

import requests

from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.router.registry.prefix_key import prefix_key
from spotrelay.sim.loopback import wait_until
from tests.support import ROUTER_TOKEN, register_node
from tests.support.resume_fleet import CHAT, MODEL, VLLM, start_fleet, stream

SYSTEM = "You are the booking assistant of a small hotel chain; answer in one sentence. " * 3


def chat(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        **extra,
    }


def order(body: dict[str, Any], nodes: list[str]) -> list[str]:
    """The nodes in the anchor's rendezvous order, as every router worker computes it."""
    key = prefix_key(body)
    assert key is not None
    return sorted(nodes, key=lambda n: rendezvous_weight(key.anchor, n), reverse=True)


def chat_requests(url: str) -> int:
    return requests.get(url + "/_control/stats", timeout=5).json()["per_path"].get(CHAT, 0)


def test_turns_stay_on_one_node_and_a_resume_goes_where_the_prefix_is(procs, logdir):
    names = ["a", "b", "c"]
    fleet = start_fleet(procs, logdir, names, "--ttft-ms", "5", "--itl-ms", "5")
    conversation = chat("Is there a room with a view on Friday?", max_tokens=40, stream=True)
    first, second, third = order(conversation, names)
    # Another guest's question, with the same system prompt, that the anchor sends to the
    # conversation's *third* choice: that node holds the shared prefix afterwards.
    other = next(
        chat(f"Do you take dogs? ({i})", max_tokens=5)
        for i in range(1000)
        if order(chat(f"Do you take dogs? ({i})"), names)[0] == third
    )
    answer = requests.post(fleet.router.url + CHAT, json=other, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-Spotrelay-Node"] == third

    # Every turn of the conversation lands on its anchor's node, whichever turn it is.
    for turn in range(3):
        body = chat("Is there a room with a view on Friday?", max_tokens=5)
        body["messages"] += [{"role": "assistant", "content": "Yes."}] * turn
        resp = requests.post(fleet.router.url + CHAT, json=body, timeout=30)
        assert resp.headers["X-Spotrelay-Node"] == first

    undisturbed = stream(fleet.router.url, CHAT, conversation)
    assert undisturbed.node == first and undisturbed.done
    before = {n: chat_requests(fleet.nodes[n].url) for n in names}
    fleet.fault(first, drop_after_tokens=8, drop_count=1)
    resumed = stream(fleet.router.url, CHAT, conversation)
    assert resumed.done and not resumed.errors
    assert resumed.text == undisturbed.text, "no token lost or repeated"
    wait_until(
        lambda: chat_requests(fleet.nodes[third].url) == before[third] + 1,
        timeout=5,
        what="the continuation on the node that served the shared prefix",
    )
    assert chat_requests(fleet.nodes[second].url) == before[second], (
        "the anchor's next node holds nothing of this prefix"
    )
    assert fleet.metric("spotrelay_router_stream_resumes_total") >= 1
    assert requests.get(
        fleet.router.control_url + "/nodes",
        headers={"Authorization": f"Bearer {ROUTER_TOKEN}"},
        timeout=5,
    ).ok


def test_long_requests_keep_off_a_node_at_risk_short_ones_do_not(procs, logdir):
    """One node reports ``risk: elevated`` (its agent saw a rebalance recommendation)."""
    fleet = start_fleet(procs, logdir, ["calm", "risky"], "--ttft-ms", "1", "--itl-ms", "1")
    register_node(
        fleet.router.control_url, ROUTER_TOKEN, "risky", fleet.nodes["risky"].url, MODEL,
        engine=VLLM, risk="elevated",
    )  # fmt: skip
    url = fleet.router.url + CHAT

    def node_for(i: str, max_tokens: int, headers: dict[str, str] | None = None) -> str:
        body = chat(f"question {i}", max_tokens=max_tokens)
        resp = requests.post(url, json=body, headers=headers or {}, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.headers["X-Spotrelay-Node"]

    # (a new question each time: a repeated one would follow its cached prefix)
    assert {node_for(f"long {i}", 2000) for i in range(12)} == {"calm"}, "max_tokens >= 1024"
    marked = {node_for(f"marked {i}", 3, {"X-Spotrelay-Long": "1"}) for i in range(12)}
    assert marked == {"calm"}, "the agent-loop marker makes any request long"
    assert {node_for(f"short {i}", 3) for i in range(24)} == {"calm", "risky"}, "short ones go"
