"""The endpoint table through the Flask app with scripted nodes, and its pure parts.

Fast and deterministic: multipart field scanning, named-event stream framing
(Responses, Anthropic), model defaulting, refusals and GETs, with the fake
node pools of :mod:`tests.support.router_fakes`. The end-to-end versions (gunicorn,
simulators, the ``openai`` client) are in ``test_router_endpoints.py``.
"""

from __future__ import annotations

import json

import pytest

from spotrelay.router.endpoints import ENDPOINTS, Routing, StreamKind
from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.router.stream.named_events import RESPONSES, event_name
from spotrelay.router.stream.resume_request import not_resumable
from spotrelay.router.stream.sse import DONE_EVENT, SSEParser
from spotrelay.router.transport.multipart import (
    MAX_PART_HEAD,
    MultipartError,
    boundary_of,
    form_fields,
)
from tests.support.router_client import client_for, openai_error_of, put
from tests.support.router_fakes import A, B, FakeResp, answering, raising, reset
from tests.support.sse import sse_named


def named(kind: str, **fields: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def responses_stream(n: int, end: str | None = "response.completed") -> list[bytes]:
    """A Responses stream: the preamble, ``n`` deltas, then ``end`` (None: cut short)."""
    events = [named("response.created", sequence_number=0),
              named("response.in_progress", sequence_number=1)]  # fmt: skip
    events += [named("response.output_text.delta", sequence_number=2 + i, delta=f" w{i}")
               for i in range(n)]  # fmt: skip
    if end:
        events.append(named(end, sequence_number=2 + n, response={"status": "completed"}))
    return events


# -- the table ------------------------------------------------------------------------------


def test_every_row_is_consistent():
    paths = [e.path for e in ENDPOINTS]
    assert len(paths) == len(set(paths))
    for ep in ENDPOINTS:
        assert (ep.routing is Routing.REFUSED) == bool(ep.reason)
        assert not ep.resume or ep.stream is StreamKind.OPENAI
        if ep.routing is Routing.MODEL:
            assert ep.methods == ("POST",)
        # The table's resume column is what the resumer does for a plain request.
        plain = {"model": "m", "prompt": "p", "messages": [{"role": "user", "content": "x"}]}
        assert ep.resume == (not_resumable(ep.path, plain) is None), ep.path


# -- multipart ------------------------------------------------------------------------------


def form(boundary: str, *parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_form_fields_are_found_and_file_bytes_are_never_taken_for_fields():
    tricky = b'--xx\r\nContent-Disposition: form-data; name="model"\r\n\r\nevil\r\n' * 3
    body = form(
        "xx1", ("file", tricky, "a.wav"), ("model", b"whisper", None), ("stream", b"true", None)
    )
    assert boundary_of("multipart/form-data; boundary=xx1") == b"xx1"
    fields = form_fields(body, b"xx1", frozenset({"model", "stream"}))
    assert fields == {"model": "whisper", "stream": "true"}
    # A file part named "model" is a file, not the model field.
    body = form("b", ("model", b"binary", "m.bin"))
    assert form_fields(body, b"b", frozenset({"model"})) == {}


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"no delimiter here"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"'),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nv',
        ),
    ],
)
def test_malformed_forms_are_refused(content_type, body):
    with pytest.raises(MultipartError):
        form_fields(body, boundary_of(content_type), frozenset({"model"}))


def test_multipart_upload_keeps_its_content_type_and_routes_by_the_form_model():
    client, _svc, fleet = client_for()
    put(client, "a", A, models=("whisper",))
    put(client, "b", B, models=("other",))
    body = form("zz", ("file", b"\x00\x01RIFF", "a.wav"), ("model", b"whisper", None))
    resp = client.post(
        "/v1/audio/transcriptions", data=body,
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
    )  # fmt: skip
    assert resp.status_code == 200
    call = fleet.calls[-1]
    assert call["target"] == A and call["body"] == body
    assert call["headers"]["Content-Type"] == "multipart/form-data; boundary=zz"
    bad = client.post("/v1/audio/transcriptions", data=b"x", headers={"Content-Type": "text/plain"})
    assert bad.status_code == 400 and openai_error_of(bad)["code"] == "invalid_form"


# -- the model ------------------------------------------------------------------------------


def test_a_body_without_model_goes_to_the_only_model_and_is_forwarded_unchanged():
    client, _svc, fleet = client_for()
    put(client, "a", A, models=("m",))
    body = b'{"prompt": "hi"}'
    resp = client.post("/tokenize", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 200 and fleet.calls[-1]["body"] == body
    put(client, "b", B, models=("n",))
    resp = client.post("/tokenize", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    err = openai_error_of(resp)
    assert err["param"] == "model" and "2 models" in err["message"]


def test_no_node_yet_means_no_model_to_default_to():
    client, _svc, _fleet = client_for(routing={"no_capacity_wait_s": 0.1})
    resp = client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert resp.status_code == 503 and openai_error_of(resp)["code"] == "no_capacity"


# -- GETs and refusals ----------------------------------------------------------------------


def test_get_endpoints_go_to_any_ready_node_and_fail_over():
    client, _svc, fleet = client_for()
    put(client, "a", A, models=("m",))
    put(client, "b", B, models=("n",))  # another model: GETs need any ready node
    fleet.behaviour[A] = raising(reset)
    fleet.behaviour[B] = answering(lambda: FakeResp(body=b'{"version": "x"}'))
    for _ in range(4):
        resp = client.get("/version")
        assert resp.status_code == 200 and resp.get_json() == {"version": "x"}
        assert resp.headers["X-Spotrelay-Node"] == "b"
    assert {c["method"] for c in fleet.calls} == {"GET"}
    assert all("Content-Type" not in c["headers"] for c in fleet.calls)


def test_refused_paths_say_why_and_reach_no_node():
    client, _svc, fleet = client_for()
    put(client)
    refused = [("POST", "/reset_prefix_cache"), ("POST", "/sleep"),
               ("POST", "/invocations"), ("GET", "/is_sleeping")]  # fmt: skip
    for method, path in refused:
        resp = client.open(path, method=method)
        assert resp.status_code == 403, path
        err = openai_error_of(resp)
        assert err["code"] == "unsupported_endpoint" and path in err["message"]
    assert fleet.calls == []
    wrong = client.get("/v1/responses")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]


# -- named-event streams --------------------------------------------------------------------


def test_frame_marks_the_end_after_a_terminal_event_only():
    events = responses_stream(2)
    framed = RESPONSES.frame([*events, b"data: [DONE]\n\n"])
    assert framed == [*events, DONE_EVENT]
    assert event_name(b'data: {"type": "response.failed"}\n\n') == b"response.failed"


def stream_client(*scripts):
    client, svc, fleet = client_for()
    put(client)
    fleet.behaviour[A] = answering(*[lambda s=s: FakeResp(chunks=s) for s in scripts])
    return client, svc, fleet


def responses_post(client):
    return client.post("/v1/responses", json={"model": "m", "input": "x", "stream": True})


def test_responses_stream_complete_passes_through_byte_for_byte():
    events = responses_stream(3)
    client, _svc, _fleet = stream_client([b"".join(events[:3]), *events[3:]])
    resp = responses_post(client)
    assert resp.status_code == 200 and resp.data == b"".join(events)


@pytest.mark.parametrize("end", ["response.failed", "response.incomplete"])
def test_an_engine_ending_a_response_itself_is_complete(end):
    events = responses_stream(1, end)
    client, svc, _fleet = stream_client(events)
    assert responses_post(client).data == b"".join(events)
    assert svc.metrics.stream_breaks.labels("eof")._value.get() == 0


@pytest.mark.parametrize("cut", [None, "reset"])
def test_a_responses_stream_cut_after_output_ends_with_a_responses_error_event(cut):
    events = responses_stream(2, end=None)
    client, svc, _fleet = stream_client(events + ([reset()] if cut else []))
    out = sse_named(responses_post(client).data)
    assert [e["type"] for e in out][-1] == "error"
    last = out[-1]
    assert last["event"] == "error" and last["code"] == "upstream_stream_broken"
    assert last["sequence_number"] == 4 and set(last) >= {"message", "param"}
    reason = "reset" if cut else "eof"
    assert svc.metrics.stream_breaks.labels(reason)._value.get() == 1


def test_an_engine_error_event_mid_stream_becomes_one_error_event():
    events = responses_stream(1, end=None)
    engine_error = named("error", sequence_number=3, code="x", message="engine died", param=None)
    client, _svc, _fleet = stream_client([*events, engine_error])
    out = sse_named(responses_post(client).data)
    assert [e["type"] for e in out].count("error") == 1
    assert "engine died" in out[-1]["message"]


def test_a_node_dying_during_prefill_is_retried_though_its_preamble_arrived():
    good = responses_stream(2)
    client, _svc, fleet = client_for()
    put(client, "a", A)
    put(client, "b", B)
    fleet.behaviour[A] = answering(lambda: FakeResp(chunks=[*responses_stream(0, None), reset()]))
    fleet.behaviour[B] = answering(lambda: FakeResp(chunks=good))
    session = next(f"s{i}" for i in range(1000) if winner(f"s{i}") == "a")
    resp = client.post(
        "/v1/responses",
        json={"model": "m", "input": "x", "stream": True},
        headers={"X-Session-ID": session},
    )
    assert resp.status_code == 200 and resp.data == b"".join(good)
    assert [c["target"] for c in fleet.calls] == [A, B]


def winner(key: str) -> str:
    return max(("a", "b"), key=lambda n: rendezvous_weight(key, n))


def test_an_anthropic_stream_cut_short_ends_with_an_anthropic_error_event():
    start = named("message_start", message={"id": "msg_1"})
    delta = named("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"})
    client, _svc, _fleet = stream_client([start, delta, reset()])
    resp = client.post("/v1/messages", json={"model": "m", "messages": [], "stream": True})
    out = sse_named(resp.data)
    assert out[-1]["event"] == "error" and out[-1]["error"]["type"] == "api_error"
    stop = named("message_stop")
    client, _svc, _fleet = stream_client([start, delta, stop])
    resp = client.post("/v1/messages", json={"model": "m", "messages": [], "stream": True})
    assert resp.data == start + delta + stop


def test_a_streamed_transcription_is_relayed_and_a_cut_ends_with_the_error_event():
    delta = (
        b'data: {"object": "transcription.chunk", "choices": [{"delta": {"content": "hi"}}]}\n\n'
    )
    body = form("zz", ("file", b"RIFF", "a.wav"), ("model", b"m", None), ("stream", b"true", None))
    headers = {"Content-Type": "multipart/form-data; boundary=zz"}
    client, _svc, _fleet = stream_client([delta, b"data: [DONE]\n\n"])
    resp = client.post("/v1/audio/transcriptions", data=body, headers=headers)
    assert resp.content_type.startswith("text/event-stream")
    assert resp.data == delta + b"data: [DONE]\n\n"
    client, _svc, _fleet = stream_client([delta, reset()])
    events = SSEParser().feed(
        client.post("/v1/audio/transcriptions", data=body, headers=headers).data
    )
    assert events[-1].is_done and events[-2].json()["error"]["code"] == "upstream_stream_broken"


def test_api_keys_guard_every_routed_endpoint_and_anthropic_clients_may_use_x_api_key():
    client, _svc, fleet = client_for(auth={"api_keys": ["k1"]})
    put(client)
    for path in ("/tokenize", "/v1/responses", "/v1/messages", "/version"):
        resp = client.open(
            path, method="GET" if path == "/version" else "POST", json={"model": "m"}
        )
        assert resp.status_code == 401, path
    assert fleet.calls == []
    ok = client.post("/v1/messages", json={"model": "m"}, headers={"x-api-key": "k1"})
    assert ok.status_code == 200
    assert "x-api-key" not in {h.lower() for h in fleet.calls[-1]["headers"]}
    assert client.post("/tokenize", json={}, headers={"x-api-key": "nope"}).status_code == 401


# -- stored responses -----------------------------------------------------------------------


def test_a_stored_response_is_found_on_whichever_node_holds_it():
    client, _svc, fleet = client_for()
    put(client, "a", A, models=("m",))
    put(client, "b", B, models=("n",))
    not_found = b'{"error": {"message": "Response not found", "code": 404}}'
    fleet.behaviour[A] = answering(lambda: FakeResp(404, not_found))
    fleet.behaviour[B] = answering(
        lambda: FakeResp(body=b'{"id": "resp_1", "status": "cancelled"}')
    )
    resp = client.post("/v1/responses/resp_1/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert resp.headers["X-Spotrelay-Node"] == "b"
    assert {c["url"] for c in fleet.calls} == {"/v1/responses/resp_1/cancel"}
    fleet.behaviour[B] = answering(lambda: FakeResp(404, not_found))
    gone = client.get("/v1/responses/resp_1")
    assert gone.status_code == 404 and gone.data == not_found  # every node asked
    fleet.behaviour[B] = raising(reset)
    unsure = client.get("/v1/responses/resp_1")
    assert unsure.status_code == 502  # b may hold it: not a 404
    bad = client.get("/v1/responses/resp%201")
    assert bad.status_code == 400 and openai_error_of(bad)["param"] == "response_id"


def test_a_stored_response_stream_is_replayed_with_its_query():
    client, _svc, fleet = client_for()
    put(client, "a", A)
    events = responses_stream(2)[3:]  # a replay after sequence number 2: no preamble
    fleet.behaviour[A] = answering(lambda: FakeResp(chunks=events))
    resp = client.get("/v1/responses/resp_1?stream=true&starting_after=2")
    assert resp.status_code == 200 and resp.data == b"".join(events)
    assert fleet.calls[-1]["url"] == "/v1/responses/resp_1?stream=true&starting_after=2"
    assert client.get("/v1/responses/resp_1?x=<script>").status_code == 400


def test_form_scans_are_bounded_in_parts_and_header_size():
    """A form's cost is bounded before any header parsing: part count and header size."""
    many = form("b", *[("f", b"v", None)] * 30, ("model", b"whisper", None))
    assert form_fields(many, b"b", frozenset({"model"}), max_parts=31) == {"model": "whisper"}
    with pytest.raises(MultipartError, match="more than 30 parts"):
        form_fields(many, b"b", frozenset({"model"}), max_parts=30)
    big_head = b"--b\r\nX-Pad: " + b"p" * MAX_PART_HEAD + b"\r\n\r\nv\r\n--b--\r\n"
    with pytest.raises(MultipartError, match="header end within"):
        form_fields(big_head, b"b", frozenset({"model"}))


def test_multipart_part_cap_is_a_400_naming_the_key():
    client, _svc, _fleet = client_for()
    put(client, "a", A, models=("whisper",))
    body = form("zz", *[("f", b"v", None)] * 1001, ("model", b"whisper", None))
    resp = client.post(
        "/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert resp.status_code == 400
    assert "routing.max_form_parts" in resp.get_json()["error"]["message"]
