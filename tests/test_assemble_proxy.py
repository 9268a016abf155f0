"""The proxy's assembled-answer path with in-memory node connections (router_fakes).

What the simulator cannot do is scripted here: streams the engine would send
for ``logprobs`` (not resumable, so a break begins the request again on
another node), nodes of an engine kind the setting does not list (asked as
they came, in a mixed fleet), every node breaking (a 502, never a truncated
body).
"""

from __future__ import annotations

import json
from typing import Any

from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.router.stream.assemble import StreamForm
from tests.support.router_fakes import (
    DONE,
    A,
    B,
    FakeResp,
    answering,
    build,
    report,
    request,
    reset,
    sse,
)

VLLM = {"kind": "vllm", "version": "x", "capabilities": []}
LLAMA = {"kind": "llama.cpp", "version": "x", "capabilities": []}
USAGE = {"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2}


def piece(text: str, lp: float, finish: str | None = None) -> bytes:
    logprobs = {"tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}],
                "text_offset": [0]}  # fmt: skip
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return sse({"id": "cmpl-9", "object": "text_completion", "created": 5, "model": "m",
                "choices": [choice]})  # fmt: skip


def usage() -> bytes:
    return sse({"id": "cmpl-9", "object": "text_completion", "created": 5, "model": "m",
                "choices": [], "usage": USAGE})  # fmt: skip


def whole() -> FakeResp:
    return FakeResp(chunks=[piece(" a", -1.0), piece(" b", -2.0, "length"), usage(), DONE])


def broken() -> FakeResp:
    return FakeResp(chunks=[piece(" a", -1.0), reset()])


def setup(engines: dict[str, dict], **routing: Any):
    svc, fleet = build(routing={"assemble_non_streaming": ["vllm"], **routing})
    for i, (url, engine) in enumerate(engines.items()):
        doc = report(url, engine=engine)
        assert svc.put_node(f"n{i}", json.dumps(doc).encode()).status == 200
    return svc, fleet


def assembled_request(svc, body: dict[str, Any], session: str | None = None):
    req = request(svc, body, session=session)
    req.assembly = StreamForm.of(req.doc)  # what the data plane sets
    return req


def test_a_break_in_a_not_resumable_stream_begins_again_on_another_node() -> None:
    svc, fleet = setup({A: VLLM, B: VLLM})
    fleet.behaviour[A] = answering(broken)
    fleet.behaviour[B] = answering(whole)
    body = {"model": "m", "prompt": "hi", "max_tokens": 2, "logprobs": 1}
    resp = svc.proxy.forward(assembled_request(svc, body, session=_session_for(svc, "n0")))
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = json.loads(resp.body)
    assert doc["choices"] == [{
        "index": 0, "text": " a b", "finish_reason": "length",
        "logprobs": {"tokens": [" a", " b"], "token_logprobs": [-1.0, -2.0],
                     "top_logprobs": [{" a": -1.0}, {" b": -2.0}], "text_offset": [0, 0]},
    }]  # fmt: skip
    assert doc["usage"] == USAGE and doc["object"] == "text_completion"
    sent = [json.loads(c["body"]) for c in fleet.calls]
    assert [c["target"] for c in fleet.calls] == [A, B]
    assert all(s["stream"] is True and s["stream_options"] == {"include_usage": True} for s in sent)
    assert 'assembled_total{outcome="restarted"} 1.0' in svc.metrics.render().decode()


def test_a_node_of_a_kind_not_listed_gets_the_request_as_it_came() -> None:
    svc, fleet = setup({A: LLAMA})
    answer = b'{"id":"cmpl-x","object":"text_completion","choices":[]}'
    fleet.behaviour[A] = answering(lambda: FakeResp(body=answer))
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    resp = svc.proxy.forward(assembled_request(svc, body))
    assert resp.status == 200 and resp.body == answer
    assert json.loads(fleet.calls[0]["body"]) == body  # not a stream


def test_every_node_breaking_is_a_502_in_openai_shape() -> None:
    svc, fleet = setup({A: VLLM, B: VLLM})
    fleet.behaviour[A] = answering(broken)
    fleet.behaviour[B] = answering(broken)
    resp = svc.proxy.forward(assembled_request(svc, {"model": "m", "prompt": "hi", "n": 1}))
    assert resp.status == 502 and resp.content_type == "application/json"
    err = json.loads(resp.body)["error"]
    assert err["code"] == "upstream_stream_broken" and "reset" in err["message"]
    assert len(fleet.calls) == 2


def _session_for(svc, node_id: str) -> str:
    """A session key whose rendezvous winner is ``node_id``."""
    ids = [n.id for n in svc.registry.nodes()]
    for i in range(10000):
        key = f"s{i}"
        if max(ids, key=lambda n: rendezvous_weight(key, n)) == node_id:
            return key
    raise AssertionError("no session key")
