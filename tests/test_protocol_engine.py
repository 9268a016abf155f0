"""The node protocol's engine block and instance id: both sides share one parser."""

import pytest

from spotrelay.core.protocol import (
    CAP_CONTINUE_FINAL_MESSAGE,
    EngineInfo,
    NodeReport,
    ProtocolError,
    parse_report,
    valid_node_id,
)


def test_engine_and_instance_round_trip():
    report = NodeReport(
        url="http://127.0.0.1:1",
        models=("m",),
        engine=EngineInfo("vllm", "0.11.0", frozenset({CAP_CONTINUE_FINAL_MESSAGE})),
        instance_id="i-0123456789abcdef0",
    )
    parsed = parse_report(report.to_json())
    assert parsed == report
    assert parsed.engine.supports(CAP_CONTINUE_FINAL_MESSAGE)


def test_old_agent_without_engine_block_gets_no_capabilities():
    parsed = parse_report({"url": "http://127.0.0.1:1", "models": ["m"]})
    assert parsed.engine == EngineInfo()
    assert not parsed.engine.supports(CAP_CONTINUE_FINAL_MESSAGE)
    assert parsed.instance_id is None
    assert "instance_id" not in NodeReport(url="u", models=("m",)).to_json()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("engine", "vllm", "'engine'"),
        ("engine", {"kind": "vl lm"}, "engine.kind"),
        ("engine", {"kind": "vllm", "version": "1\n2"}, "engine.version"),
        ("engine", {"capabilities": ["x"] * 33}, "engine.capabilities"),
        ("engine", {"capabilities": ["a\nb"]}, "engine.capabilities"),
        ("instance_id", "i-xyz", "instance_id"),
        ("instance_id", "i-0123456789abcdef0\n", "instance_id"),
    ],
)
def test_bad_engine_or_instance_is_refused_naming_the_field(field, value, named):
    body = {"url": "http://127.0.0.1:1", "models": ["m"], field: value}
    with pytest.raises(ProtocolError, match=named.replace(".", r"\.")):
        parse_report(body)


def test_node_id_rejects_trailing_newline():
    assert valid_node_id("evil")
    assert not valid_node_id("evil\n")
